"""Qwen2.5-3B's shapes with random bf16 weights on whatever accelerator is present (issue 21):
decode tokens/s at batch 256, a chunked rollout of 2,560 rows, and GRPO train-step tokens/s,
each beside its roofline.

- decode: `rollout.sampler.decode`, greedy, no stop strings, `--new` steps after an `append`
  prefill of `--prompt` random tokens a row. Roofline: every step reads the weights once and
  each row's KV cache up to its length, at the device's memory bandwidth (HBM; on CPU the
  bandwidth of a large copy, measured here).
- rollout: `--rollout-rows` rows in chunks of `--batch`: prefill + decode per chunk, tokens/s of
  the new tokens, prefill included (the same roofline, plus the prefill's FLOPs at peak).
- train: `train.steps` GRPO step (forward + backward + AdamW) on `--train-batch` x
  `--train-length` random tokens; MFU = (6 N + 12 L T d) FLOPs a token x tokens/s over the
  device's peak bf16 FLOP/s (on CPU: the rate of a large bf16 matmul, measured here).

Peaks by device kind are the vendors' dense bf16 / HBM figures; `--peak-tflops` / `--hbm-gbs`
override them. One short script, under 8 minutes at full size on one H200.

    python benchmarks/accelerator.py            # Qwen2.5-3B shapes
    python benchmarks/accelerator.py --small    # a few-layer, narrow model: proves the script on CPU
"""
import argparse
import os
import time

os.environ.setdefault("OPENBLAS_CORETYPE", "Haswell")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

# (dense bf16 TFLOP/s, HBM GB/s) by device_kind substring
PEAKS = {"H200": (989.0, 4800.0), "H100": (989.0, 3350.0), "A100": (312.0, 2039.0), "L4": (121.0, 300.0),
         "TPU v5 lite": (197.0, 819.0), "TPU v5e": (197.0, 819.0), "TPU v5p": (459.0, 2765.0),
         "TPU v4": (275.0, 1228.0), "TPU v6": (918.0, 1640.0)}


def measured_cpu_peaks() -> tuple[float, float]:
    """(bf16 matmul TFLOP/s, copy GB/s) measured on this host: the CPU's practical ceilings."""
    a = jnp.ones((2048, 2048), jnp.bfloat16)
    mm = jax.jit(lambda x: x @ x)
    mm(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(5):
        mm(a).block_until_ready()
    flops = 5 * 2 * 2048 ** 3 / (time.perf_counter() - t)
    x = jnp.ones((64 * 2 ** 20,), jnp.float32)  # 256 MiB, read and written in place (donated)
    cp = jax.jit(lambda v: v + 1.0, donate_argnums=0)
    x = cp(x).block_until_ready()
    t = time.perf_counter()
    for _ in range(5):
        x = cp(x).block_until_ready()
    gbs = 5 * 2 * x.nbytes / (time.perf_counter() - t)
    return flops / 1e12, gbs / 1e9


def peaks(args) -> tuple[float, float, str]:
    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", dev.platform)
    found = next((v for k, v in PEAKS.items() if k.lower() in kind.lower()), None)
    if found is None and dev.platform == "cpu":
        found, kind = measured_cpu_peaks(), f"{kind} (peaks measured here)"
    tf, gbs = found if found else (float("nan"), float("nan"))
    return args.peak_tflops or tf, args.hbm_gbs or gbs, kind


def model_config(args):
    from searche1_jax.model.config import get_preset
    over = dict(dtype="bfloat16", param_dtype="bfloat16", remat=True)
    if args.small:  # Qwen2.5's structure (GQA 8:1, biases, tied head), a few narrow layers
        over.update(vocab_size=4096, d_model=256, n_layers=2, n_heads=8, n_kv_heads=1, head_dim=32, mlp_dim=512)
    return get_preset("qwen2.5-3b", **over)


def kv_bytes_per_token(cfg) -> int:
    return cfg.n_layers * 2 * cfg.n_kv_heads * cfg.head_dim * jnp.dtype(cfg.dtype).itemsize


def bench_decode(model, cfg, rows: int, prompt: int, new: int, rng, chunks: int = 1):
    """-> (seconds of the timed decode calls, seconds of the prefills, new tokens) over `chunks`
    chunks of `rows` rows (each: prefill + decode; all compiled by a first untimed chunk)."""
    from searche1_jax.model.transformer import init_cache
    from searche1_jax.rollout.sampler import SamplingParams, append, decode, empty_state

    no_stop = dict(stop_table=jnp.zeros((1, cfg.vocab_size), jnp.int32), stop_rank=jnp.ones((1, 1), jnp.int32),
                   stop_enabled=jnp.zeros((rows, 1), bool), eos_ids=jnp.array([-1], jnp.int32))

    def chunk():
        toks = jnp.asarray(rng.integers(0, cfg.vocab_size, (rows, prompt)), jnp.int32)
        t0 = time.perf_counter()
        st = empty_state(init_cache(cfg, rows, prompt + new), cfg.vocab_size)
        st = jax.block_until_ready(append(model, st, toks, jnp.full((rows,), prompt, jnp.int32), jnp.int32(0)))
        t1 = time.perf_counter()
        out, st = decode(model, st, jnp.ones((rows,), bool), jax.random.key(0), max_new=new,
                         params=SamplingParams(greedy=True), **no_stop)
        n = int(np.asarray(out.n_new).sum())
        return time.perf_counter() - t1, t1 - t0, n

    chunk()  # compile
    runs = [chunk() for _ in range(chunks)]
    return tuple(sum(r[i] for r in runs) for i in range(3))


def bench_train(model, cfg, batch: int, length: int, micro: int, rng, steps: int) -> float:
    """Seconds per GRPO step (forward + backward + AdamW) on batch x length tokens."""
    from searche1_jax.model.speed import SpeedPolicy
    from searche1_jax.train.batching import pack, to_micro
    from searche1_jax.train.state import Binder, params_of
    from searche1_jax.train.steps import StepConfig, hyper, make_steps

    h = hyper(lr=1e-6, weight_decay=0.01, grad_clip=1.0, kl_coef=0.001, entropy_coef=0.001,
              temperature=1.0, ofsd_temperature=1.0)
    binder, params = Binder(model), params_of(model)
    seqs = [rng.integers(0, cfg.vocab_size, length).tolist() for _ in range(batch)]
    b = pack(seqs, [[0] * (length // 2) + [1] * (length - length // 2)] * batch, length=length)
    b["old_logps"] = np.full((batch, length - 1), -2.0, np.float32)  # per predicted token
    b["ref_logps"] = np.full((batch, length - 1), -2.1, np.float32)
    b["advantages"] = rng.normal(0, 1, batch).astype(np.float32)
    jb = {k: jnp.asarray(v) for k, v in to_micro(b, micro).items()}
    st = make_steps(binder, StepConfig(logit_barrier=SpeedPolicy.for_backend().logit_barrier))
    opt = st.init(params, h)
    params, opt, _ = st.grpo(params, opt, jb, h)  # compile
    jax.block_until_ready(params)
    t = time.perf_counter()
    for _ in range(steps):
        params, opt, _ = st.grpo(params, opt, jb, h)
    jax.block_until_ready(params)
    return (time.perf_counter() - t) / steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true", help="a small model and batch: proves the script on CPU")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--rollout-rows", type=int, default=2560)
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--train-length", type=int, default=2048)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=0.0)
    ap.add_argument("--hbm-gbs", type=float, default=0.0)
    args = ap.parse_args()
    if args.small:
        args.batch, args.prompt, args.new, args.rollout_rows = 16, 64, 32, 32
        args.train_batch, args.train_length, args.micro_batch, args.steps = 4, 128, 2, 2
    from searche1_jax.model.create import create_model
    cfg = model_config(args)
    tf, gbs, kind = peaks(args)
    model = create_model(cfg, seed=0)
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    w_bytes = n_params * 2
    rng = np.random.default_rng(0)
    print(f"device: {kind}; peaks used: {1e3 * tf:,.1f} GFLOP/s bf16, {gbs:.1f} GB/s; model: {cfg.n_layers} layers, "
          f"d {cfg.d_model}, {n_params / 1e6:,.1f} M params bf16 (random)", flush=True)

    # decode at --batch: mean length over the call is prompt + new / 2
    dec_s, pre_s, n = bench_decode(model, cfg, args.batch, args.prompt, args.new, rng)
    step_bytes = w_bytes + args.batch * (args.prompt + args.new / 2) * kv_bytes_per_token(cfg)
    roof = args.batch / (step_bytes / (gbs * 1e9))
    print(f"decode, batch {args.batch}, {args.prompt}-token prompts, {args.new} new: {n / dec_s:,.0f} tok/s "
          f"vs roofline {roof:,.0f} tok/s (weights + KV at {gbs:.0f} GB/s) = {100 * n / dec_s / roof:.1f}%", flush=True)

    chunks = max(1, args.rollout_rows // args.batch)
    dec_s, pre_s, n = bench_decode(model, cfg, args.batch, args.prompt, args.new, rng, chunks)
    pre_flops = chunks * args.batch * args.prompt * 2 * n_params
    roof_s = chunks * args.new * step_bytes / (gbs * 1e9) + pre_flops / (tf * 1e12)
    print(f"rollout, {chunks * args.batch} rows in chunks of {args.batch}: {n / (dec_s + pre_s):,.0f} new tok/s "
          f"(prefill {pre_s:.1f} s, decode {dec_s:.1f} s) vs roofline {n / roof_s:,.0f} tok/s = "
          f"{100 * roof_s / (dec_s + pre_s):.1f}%", flush=True)

    t = bench_train(model, cfg, args.train_batch, args.train_length, args.micro_batch, rng, args.steps)
    tokens = args.train_batch * args.train_length
    flops_tok = 6 * n_params + 12 * cfg.n_layers * args.train_length * cfg.d_model
    mfu = tokens * flops_tok / t / (tf * 1e12)
    print(f"train step (GRPO, fwd + bwd + AdamW, remat), {args.train_batch} x {args.train_length}: "
          f"{tokens / t:,.0f} tok/s, {t:.2f} s/step; MFU {100 * mfu:.1f}% of {1e3 * tf:,.1f} GFLOP/s", flush=True)


if __name__ == "__main__":
    main()
