"""A single run as a population of one: does the shared step cost what the old single step did?

Three GRPO train steps over the same packed batch, compiled once each, called in turn
(`common.alternate`, so machine drift hits all sides alike):

- `baseline`: the single-run step as it was before the trainers were merged, loaded from git
  (`--baseline-rev`, default e8f540c: `train/steps.py::make_grpo_step` with its optax AdamW
  and the loss numbers baked into the program as constants);
- `single`: today's single run (`make_steps(population=False)`: hyper-parameters traced);
- `pop1`: the member-axis program with one member (`make_steps(population=True)`): the same
  member step over a leading member axis of size 1, dropped inside the device's program; this
  is what every device of an N-members-on-N-devices population runs (`--vmap-one`: `jax.vmap`
  over the size-1 axis instead, as first built). `Experiment` runs a population of one as a
  single run, so a one-member sweep costs `single`.

Prints median seconds per step and the ratios to the baseline, and checks the three give the
same loss and gradient norm.

    python benchmarks/population_of_one.py [--preset smollm2|tiny] [--batch 8 --length 256 --micro 4]
"""
import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("OPENBLAS_CORETYPE", "Haswell")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import alternate  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_baseline(rev: str):
    """The modules `train/steps.py` and `train/state.py` (its `make_optimizer`) at git revision
    `rev`, imported under private names, the steps wired to that revision's `rl/logprobs.py`
    (which chose its CPU logit barrier itself)."""
    out = {}
    for name, path in (("logprobs", "searche1_jax/rl/logprobs.py"), ("steps", "searche1_jax/train/steps.py"),
                       ("state", "searche1_jax/train/state.py")):
        src = subprocess.run(["git", "-C", ROOT, "show", f"{rev}:{path}"], check=True, capture_output=True,
                             text=True).stdout
        file = os.path.join(tempfile.mkdtemp(), f"baseline_{name}.py")
        with open(file, "w") as f:
            f.write(src)
        spec = importlib.util.spec_from_file_location(f"baseline_{name}", file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
        out[name] = module
    out["steps"].token_logps_and_entropy = out["logprobs"].token_logps_and_entropy
    return out["steps"], out["state"]


def make_batch(vocab, rows, length, seed=0):
    from searche1_jax.train.batching import pack
    rng = np.random.default_rng(seed)
    seqs, masks = [], []
    for _ in range(rows):
        p = int(rng.integers(16, length // 4))
        r = int(rng.integers(length // 2, length - p))
        seqs.append(list(rng.integers(0, vocab, p + r)))
        masks.append([0] * p + [1] * r)
    b = pack(seqs, masks, length=length)
    b["advantages"] = rng.normal(0.3, 1.0, rows).astype(np.float32)
    return b


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="smollm2", help="smollm2 (the real 135M GGUF) or a ModelConfig preset")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--baseline-rev", default="e8f540c")
    ap.add_argument("--vmap-one", action="store_true", help="pop1 as jax.vmap over the size-1 member axis")
    args = ap.parse_args()

    from searche1_jax.model.checkpoint import load_gguf, smollm2_gguf_path
    from searche1_jax.model.config import get_preset
    from searche1_jax.model.create import create_model
    from searche1_jax.model.speed import SpeedPolicy
    from searche1_jax.train.batching import to_micro
    from searche1_jax.train.state import Binder, params_of
    from searche1_jax.train.steps import StepConfig, hyper, make_steps

    if args.preset == "smollm2":
        model, cfg = load_gguf(smollm2_gguf_path(), dtype="float32", remat=False)
    else:
        cfg = get_preset(args.preset, dtype="float32", remat=False)
        model = create_model(cfg, seed=0)
    binder, params0 = Binder(model), params_of(model)
    del model
    lr, wd, clip, kl, ent = 1e-6, 0.01, 1.0, 0.001, 0.001  # configs/common.py
    h = hyper(lr=lr, weight_decay=wd, grad_clip=clip, kl_coef=kl, entropy_coef=ent, temperature=1.0,
              ofsd_temperature=1.0)
    step_cfg = StepConfig(grpo_chunk=1024, logit_barrier=SpeedPolicy.for_backend().logit_barrier)
    chunk = step_cfg.grpo_chunk

    rng = np.random.default_rng(1)
    single = make_steps(binder, step_cfg)
    b = make_batch(cfg.vocab_size, args.batch, args.length)
    logps = np.asarray(single.logps(params0, b["tokens"], b["valid"], h))
    b["old_logps"] = (logps + rng.normal(0, 0.1, logps.shape)).astype(np.float32)
    b["ref_logps"] = (logps + rng.normal(0, 0.3, logps.shape)).astype(np.float32)
    micro = {k: jnp.asarray(v) for k, v in to_micro(b, args.micro).items()}

    old_steps, old_state = load_baseline(args.baseline_rev)
    opt = old_state.make_optimizer(lr, total_steps=1000, warmup_ratio=0.0, weight_decay=wd, grad_clip=clip)
    base_step = old_steps.make_grpo_step(binder, opt, old_steps.GRPOLossConfig(chunk=chunk, kl_coef=kl,
                                                                               entropy_coef=ent))
    pop = make_steps(binder, step_cfg, population=True)
    if args.vmap_one:
        from searche1_jax.train.steps import member_functions
        pop.grpo = jax.jit(jax.vmap(member_functions(binder, step_cfg)["grpo"]),
                           donate_argnums=(0, 1))
    h1 = {k: jnp.asarray(v)[None] for k, v in h.items()}
    micro1 = jax.tree.map(lambda x: x[None], micro)

    copy = lambda t: jax.tree.map(jnp.copy, t)  # noqa: E731
    sides = {"baseline": {"p": copy(params0)}, "single": {"p": copy(params0)},
             "pop1": {"p": jax.tree.map(lambda x: x[None], params0)}}
    sides["baseline"]["s"] = jax.jit(opt.init)(sides["baseline"]["p"])
    sides["single"]["s"] = single.init(sides["single"]["p"], h)
    sides["pop1"]["s"] = pop.init(sides["pop1"]["p"], h1)
    calls = {
        "baseline": lambda s: base_step(s["p"], s["s"], micro),
        "single": lambda s: single.grpo(s["p"], s["s"], micro, h),
        "pop1": lambda s: pop.grpo(s["p"], s["s"], micro1, h1),
    }

    def runner(name):
        def fn():
            s = sides[name]
            s["p"], s["s"], m = calls[name](s)
            jax.block_until_ready(s["p"])
            return {k: float(np.asarray(v).reshape(-1)[0]) for k, v in m.items()}
        return fn

    fns = {name: runner(name) for name in sides}
    first = {name: fn() for name, fn in fns.items()}  # compile + the same first update everywhere
    times, _ = alternate(fns, args.rounds)
    med = {k: float(np.median(v)) for k, v in times.items()}
    cpu = open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(": \t")
    print(f"machine: {os.cpu_count()} cores, {cpu}; jax {jax.__version__}; load {os.getloadavg()[0]:.2f}")
    print(f"GRPO step, {args.preset}, batch {args.batch} x {args.length} ({args.batch // args.micro} micro-batches "
          f"of {args.micro}), fp32, {args.rounds} alternating rounds")
    for name in sides:
        print(f"  {name:8s}: median {med[name]:.3f} s/step ({', '.join(f'{x:.2f}' for x in times[name])}); "
              f"first-step loss {first[name]['loss']:.7f}, grad norm {first[name]['grad_norm']:.6f}")
    for name in ("single", "pop1"):
        print(f"  {name} / baseline: {med[name] / med['baseline']:.3f}x")
    for name in ("single", "pop1"):
        for k in ("loss", "grad_norm"):
            a, ref = first[name][k], first["baseline"][k]
            assert abs(a - ref) <= 1e-4 * max(abs(ref), 1e-6), f"{name} {k} {a} != baseline {ref}"


if __name__ == "__main__":
    main()
