"""OFSD forward KL, loss + grad: naive full-vocab (rl/kl.py) vs fused chunked (rl/fused_kl.py).

The naive loss builds student and teacher logits [N, V]; the fused ones never build [N, V]:
`fused_grad_in_forward` (the default of `fused_forward_kl`) computes the gradients in the
forward pass (4 matmuls, like naive; the forward-KL logit gradient written out by hand) over
token chunks of `--eager-chunk` (it holds their [chunk, V] logits) and adds each chunk's head
gradient a [d, vocab_chunk] slice at a time; `fused` (grad_in_forward=False) works on
[chunk, vocab_chunk] logit tiles, its backward pass scanning vocabulary slices, recomputing
their logits and writing each slice of the head gradient once; `fused_token` scans token
chunks only (vocab_chunk=None: [chunk, V] logits, per-chunk [d, V] head-gradient temporary).
All compute the loss and its gradient w.r.t. the student hidden states [N, d] and the LM head
[d, V] (teacher: hidden states + its own head, under stop-gradient), f32, Qwen2.5 sizes
V = 151,936, d = 2,048.

Times: wall clock and the process's CPU time (all threads; less sensitive to other jobs on a
shared machine, though memory-bandwidth contention still shows). Each variant runs in its own
subprocess; its peak resident memory (VmHWM, reset after the
inputs are built) is that of the loss + grad call. The working set is that peak minus what
was resident before the call (the inputs);
XLA's compiled temp allocation (memory_analysis) is reported too, since the resident peak
includes the inputs (two [d, V] heads, 2.3 GiB) and the [d, V] head gradient every variant must
hold. Ratios are against the naive variant measured in the same run.

    python benchmarks/ofsd_kl.py [--n 4096] [--chunk 512] [--vocab-chunk 2048] [--eager-chunk 512] [--iters 1]
                                 [--variants naive,fused,fused_token,fused_grad_in_forward]
                                 [--compile-only]
"""
import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("OPENBLAS_CORETYPE", "Haswell")

GIB = 1024 ** 3


def child(variant: str, n: int, d: int, v: int, chunk: int, vocab_chunk: int, iters: int,
          eager_chunk: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_default_matmul_precision", "highest")
    from searche1_jax.model.speed import SpeedPolicy
    from searche1_jax.rl.fused_kl import fused_forward_kl
    from searche1_jax.rl.kl import forward_kl

    barrier = SpeedPolicy.for_backend().logit_barrier   # as the training step passes it

    key = jax.random.PRNGKey(0)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    if iters == 0:
        hs = ht = jax.ShapeDtypeStruct((n, d), jnp.float32)
        head = t_head = jax.ShapeDtypeStruct((d, v), jnp.float32)
        mask = jax.ShapeDtypeStruct((n,), jnp.float32)
    else:
        hs = jax.random.normal(k1, (n, d), jnp.float32)
        ht = jax.random.normal(k2, (n, d), jnp.float32)
        head = jax.random.normal(k3, (d, v), jnp.float32) * 0.02
        t_head = jax.random.normal(k4, (d, v), jnp.float32) * 0.02
        mask = (jnp.arange(n) % 8 != 0).astype(jnp.float32)  # 7/8 of tokens are sampled ones

    if variant == "naive":
        def loss(hs, head, ht, t_head, mask):
            return forward_kl(hs @ head, ht @ t_head, mask)
    elif variant in ("fused", "fused_token", "fused_grad_in_forward"):
        eager = variant == "fused_grad_in_forward"
        vc = None if variant == "fused_token" else vocab_chunk

        def loss(hs, head, ht, t_head, mask):
            return fused_forward_kl(hs, head, ht, t_head, None, mask, chunk=eager_chunk if eager else chunk,
                                    grad_in_forward=eager, vocab_chunk=vc, barrier=barrier)
    else:
        raise ValueError(f"unknown variant {variant!r}")

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    if iters == 0:  # --compile-only: XLA's planned buffers, from shapes alone (nothing runs)
        shapes = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (hs, head, ht, t_head, mask)]
        mem = fn.lower(*shapes).compile().memory_analysis()
        return {"variant": variant, "xla_temp_gib": mem.temp_size_in_bytes / GIB,
                "xla_args_gib": mem.argument_size_in_bytes / GIB,
                "xla_out_gib": mem.output_size_in_bytes / GIB}
    compiled = fn.lower(hs, head, ht, t_head, mask).compile()
    mem = compiled.memory_analysis()
    temp = getattr(mem, "temp_size_in_bytes", float("nan")) if mem is not None else float("nan")

    def run():
        val, grads = compiled(hs, head, ht, t_head, mask)
        jax.block_until_ready(grads)
        return float(val)

    jax.block_until_ready((hs, ht, head, t_head, mask))
    gc.collect()
    resident = _rss("VmRSS")
    # Reset the kernel's peak-RSS mark so creating the inputs (jax.random temporaries) does not
    # count: the peak below is that of the loss + grad calls alone (inputs stay resident).
    reset = _reset_peak()
    times, cpu, value = [], [], float("nan")
    for _ in range(max(iters, 1)):  # compiled ahead of time: no warm-up call needed
        t, c = time.perf_counter(), time.process_time()
        value = run()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    peak = _rss("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"variant": variant, "time_s": float(np.median(times)), "cpu_s": float(np.median(cpu)),
            "peak_rss_gib": peak / GIB,
            "resident_before_gib": resident / GIB, "xla_temp_gib": temp / GIB, "loss": value,
            "peak_reset": reset}


def _rss(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return float(line.split()[1]) * 1024
    return float("nan")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--v", type=int, default=151936)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--vocab-chunk", type=int, default=2048)
    ap.add_argument("--eager-chunk", type=int, default=512,
                    help="token chunk of fused_grad_in_forward (it holds [chunk, V] logits)")
    ap.add_argument("--iters", type=int, default=1)
    ap.add_argument("--variants", default="naive,fused,fused_token,fused_grad_in_forward")
    ap.add_argument("--compile-only", action="store_true",
                    help="only compile each variant and print XLA's planned temp/argument/output bytes")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.compile_only:
        args.iters = 0

    if args.child:
        print(json.dumps(child(args.child, args.n, args.d, args.v, args.chunk, args.vocab_chunk,
                               args.iters, args.eager_chunk)))
        return

    print(f"N={args.n} d={args.d} V={args.v} chunk={args.chunk} vocab_chunk={args.vocab_chunk} "
          f"eager_chunk={args.eager_chunk} f32 CPU, loss + grad (hidden, head); "
          f"median of {args.iters} call(s), compiled ahead of time", flush=True)
    rows = []
    for variant in args.variants.split(","):
        cmd = [sys.executable, __file__, "--child", variant, "--n", str(args.n), "--d", str(args.d),
               "--v", str(args.v), "--chunk", str(args.chunk), "--vocab-chunk", str(args.vocab_chunk),
               "--iters", str(args.iters), "--eager-chunk", str(args.eager_chunk)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{variant}: failed (rc {out.returncode}): {out.stderr.strip()[-400:]}", flush=True)
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        if args.compile_only:
            print(f"{variant:>22}: XLA temp {row['xla_temp_gib']:6.2f} GiB  arguments "
                  f"{row['xla_args_gib']:.2f} GiB  outputs {row['xla_out_gib']:.2f} GiB", flush=True)
            continue
        print(f"{variant:>22}: {row['time_s']:7.2f} s (CPU {row['cpu_s']:7.2f} s)  "
              f"peak RSS {row['peak_rss_gib']:6.2f} GiB "
              f"(inputs resident before: {row['resident_before_gib']:.2f} GiB, "
              f"working set {row['peak_rss_gib'] - row['resident_before_gib']:.2f} GiB)  "
              f"XLA temp {row['xla_temp_gib']:6.2f} GiB  loss {row['loss']:.6f}", flush=True)
    base = next((r for r in rows if r["variant"] == "naive"), None)
    if args.compile_only and base is not None:
        for r in rows:
            if r is not base:
                new = lambda x: x["xla_temp_gib"] + x["xla_out_gib"]  # noqa: E731 (what the call adds)
                print(f"{r['variant']:>22} / naive: XLA temp {r['xla_temp_gib'] / base['xla_temp_gib']:.4f}x  "
                      f"temp + outputs {new(r) / new(base):.4f}x")
        return
    if base is None:
        print("no naive baseline measured: no ratios")
        return
    working_set = lambda x: x["peak_rss_gib"] - x["resident_before_gib"]  # noqa: E731
    for r in rows:
        if r is base:
            continue
        print(f"{r['variant']:>22} / naive: time {r['time_s'] / base['time_s']:.2f}x  "
              f"CPU time {r['cpu_s'] / base['cpu_s']:.2f}x  "
              f"peak RSS {r['peak_rss_gib'] / base['peak_rss_gib']:.3f}x  working set "
              f"{working_set(r) / working_set(base):.3f}x  "
              f"XLA temp {r['xla_temp_gib'] / base['xla_temp_gib']:.4f}x  "
              f"|loss diff| {abs(r['loss'] - base['loss']):.2e}")


if __name__ == "__main__":
    main()
