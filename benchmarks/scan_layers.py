"""Scanned vs unrolled layers (`model.scan_layers`, issue 20 item 7): compile time, the compiled
programs' resident size, and per-step runtime, each side measured in the same run.

    # (a) + (c): the demo config's real GRPO update and decode program (aot.Programs, built from
    # shapes: nothing the model's size is allocated), each compiled in a fresh subprocess
    python benchmarks/scan_layers.py compile --preset smollm2-135m
    python benchmarks/scan_layers.py compile --preset smollm2-135m --layers 36 --narrow
    # (b): per-step runtime at a preset's shapes, random weights, both layouts alternated
    python benchmarks/scan_layers.py run --preset smollm2-135m

A compile child reports wall seconds of `lower(...).compile()` and RSS (from /proc/self/statm)
after lowering, after compiling (the executable alive) and the process peak; the growth from
lowering to compiled is the executable's resident code plus what the compile left allocated
(XLA:CPU's memory_analysis() reports generated_code_size_in_bytes = 0, so RSS is the measure),
and XLA's temp bytes of the program.
Compiled with the default XLA:CPU flags (a run's real compile, LLVM optimisation included).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _model_cfg(args, scan: bool):
    from searche1_jax.model.config import get_preset
    cfg = get_preset(args.preset)
    if args.narrow:   # compile time and code size scale with the op count, not the widths
        cfg = cfg.replace(vocab_size=2048, d_model=128, n_heads=4, n_kv_heads=2, head_dim=32, mlp_dim=256)
    if args.layers:
        cfg = cfg.replace(n_layers=args.layers)
    return cfg.replace(dtype="float32", param_dtype="float32", remat=True, scan_layers=scan)


def compile_child(args) -> None:
    """One program, one layout: print a JSON line of compile seconds and RSS."""
    import jax

    from searche1_jax import config as C
    from searche1_jax.aot import Programs, memory
    from searche1_jax.plan import run_shape_from_config
    from searche1_jax.program_plan import program_shapes
    c = C.from_config_dict(C.load_config_file(os.path.join(ROOT, "configs", "demo.py")))
    mesh = {"data": 1, "fsdp": 1, "tensor": 1}
    run = run_shape_from_config(c)
    s = program_shapes(c, run, mesh)
    cfg = _model_cfg(args, args.layout == "scan")
    programs = Programs(c, cfg, mesh, s)
    t0 = time.perf_counter()
    lowered = programs.lower(args.program)
    lower_s = time.perf_counter() - t0
    rss0 = _rss()
    t0 = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    rss1 = _rss()
    del lowered
    print(json.dumps({"program": args.program, "layout": args.layout, "layers": cfg.n_layers,
                      "lower_s": lower_s, "compile_s": compile_s, "rss_lowered": rss0, "rss_compiled": rss1,
                      "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "temp": memory(compiled)["temp"],
                      "jax": jax.__version__}))
    del compiled


def compile_parent(args) -> None:
    rows = []
    for program in args.programs.split(","):
        for layout in ("unrolled", "scan"):
            cmd = [sys.executable, __file__, "compile-child", "--preset", args.preset,
                   "--program", program, "--layout", layout] + (["--narrow"] if args.narrow else []) + \
                  (["--layers", str(args.layers)] if args.layers else [])
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
            if out.returncode:
                sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{program:7s} {layout:8s} L={r['layers']}: lower {r['lower_s']:.1f} s, compile "
                  f"{r['compile_s']:.1f} s; RSS lowered {r['rss_lowered'] / 1e9:.2f} GB -> compiled "
                  f"{r['rss_compiled'] / 1e9:.2f} GB (+{(r['rss_compiled'] - r['rss_lowered']) / 1e9:.2f}), "
                  f"peak {r['peak_rss'] / 1e9:.2f} GB; XLA temp {r['temp'] / 1e9:.3f} GB", flush=True)
    by = {(r["program"], r["layout"]): r for r in rows}
    print("\nratio unrolled / scanned:")
    for program in args.programs.split(","):
        u, s = by[(program, "unrolled")], by[(program, "scan")]
        grow = lambda r: r["rss_compiled"] - r["rss_lowered"]  # noqa: E731
        print(f"  {program}: compile {u['compile_s'] / s['compile_s']:.2f}x, lower "
              f"{u['lower_s'] / s['lower_s']:.2f}x, RSS growth {grow(u) / max(grow(s), 1):.2f}x, "
              f"peak RSS {u['peak_rss'] / s['peak_rss']:.2f}x, XLA temp {u['temp'] / s['temp']:.2f}x")


def run_bench(args) -> None:
    """Per-step runtime, both layouts with the same weights, alternated call by call."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from benchmarks.common import alternate
    from searche1_jax.model.create import create_model, flat_params, model_from_arrays, unstack_layers
    un = create_model(_model_cfg(args, False), seed=0)
    sc = model_from_arrays(_model_cfg(args, True),
                           {k: np.asarray(v) for k, v in unstack_layers(flat_params(un), un.cfg).items()})
    rng = np.random.default_rng(0)
    v = un.cfg.vocab_size
    tokens = jnp.asarray(rng.integers(0, v, (args.batch, args.length)), jnp.int32)

    @jax.jit
    def train(model):   # a forward + backward of the training forward (remat as the demo)
        def loss(m):
            logp = jax.nn.log_softmax(m(tokens)[:, :-1], axis=-1)
            return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1).mean()
        return nnx.grad(loss)(model)

    extend = jax.jit(lambda m, t, n, c: m.extend(t, n, c), donate_argnums=3)
    rows = args.decode_rows
    prompt = jnp.asarray(rng.integers(0, v, (rows, args.prompt)), jnp.int32)
    state = {}
    for name, m in (("unrolled", un), ("scan", sc)):
        view = m.few_row_view()   # the CPU decode path (SpeedPolicy.few_row_kernels)
        out, cache = extend(view, prompt, jnp.full(rows, args.prompt, jnp.int32), m.init_cache(rows, args.cache))
        state[name] = [view, cache, jnp.argmax(out, -1).astype(jnp.int32)[:, None]]

    def decode(name):
        view, cache, tok = state[name]
        if int(cache.length[0]) >= args.cache - 1:   # start over: same slots every round
            cache = cache._replace(length=jnp.full(rows, args.prompt, jnp.int32))
        out, cache = extend(view, tok, jnp.ones(rows, jnp.int32), cache)
        state[name][1:] = [cache, jnp.argmax(out, -1).astype(jnp.int32)[:, None]]
        return jax.block_until_ready(out)

    parts = args.parts.split(",")
    calls = {"train": lambda m, name: train(m), "decode": lambda m, name: decode(name)}
    times = {}
    for part in parts:
        t0 = time.perf_counter()
        jax.block_until_ready(calls[part](un, "unrolled"))
        t1 = time.perf_counter()
        jax.block_until_ready(calls[part](sc, "scan"))
        t2 = time.perf_counter()
        print(f"first {part} call (compile + run): unrolled {t1 - t0:.1f} s, scan {t2 - t1:.1f} s")
        fns = {f"{part} {name}": (lambda m=m, name=name, part=part: jax.block_until_ready(calls[part](m, name)))
               for name, m in (("unrolled", un), ("scan", sc))}
        got, _ = alternate(fns, args.rounds if part == "train" else args.decode_rounds)
        times.update(got)
    med = {k: statistics.median(t) for k, t in times.items()}
    for k, t in med.items():
        print(f"{k:16s} median {t * 1e3:8.1f} ms over {len(times[k])} calls")
    print("ratio scan / unrolled: " + ", ".join(
        f"{part} {med[f'{part} scan'] / med[f'{part} unrolled']:.2f}x" for part in parts))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("compile", "compile-child", "run"))
    p.add_argument("--preset", default="smollm2-135m")
    p.add_argument("--layers", type=int, default=0, help="override n_layers (0: the preset's)")
    p.add_argument("--narrow", action="store_true", help="small widths (vocab 2048, d 128)")
    p.add_argument("--programs", default="grpo,decode")
    p.add_argument("--program", default="grpo")
    p.add_argument("--layout", choices=("unrolled", "scan"), default="unrolled")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--decode-rows", type=int, default=8)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--cache", type=int, default=512)
    p.add_argument("--decode-rounds", type=int, default=40)
    p.add_argument("--parts", default="train,decode", help="run: which of train,decode to time")
    args = p.parse_args()
    {"compile": compile_parent, "compile-child": compile_child, "run": run_bench}[args.mode](args)


if __name__ == "__main__":
    main()
