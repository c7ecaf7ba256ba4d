"""Sweep throughput: a 4-member vmapped population vs 4 sequential single runs.

Train-step level (fixed packed batches, as in tests/train/test_steps.py): each "run" does
`--steps` GRPO steps (old/ref log-probs + one PPO update of `--rows` trajectories x
`--length` tokens). Members differ in seed and lr; both sides run the same member step
(`train/steps.py`, hyper-parameters traced): the single runs call it plainly one member after
another, the population calls it vmapped over all members at once. Prints wall
time with compilation (what a user waits for) and the steady-state per-step time, and the
ratios sequential / population.

    python benchmarks/sweep.py [--members 4] [--steps 5] [--preset tiny] [--rows 8 --length 128]
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python benchmarks/sweep.py  # member mesh of 2
"""
import argparse
import os
import time

os.environ.setdefault("OPENBLAS_CORETYPE", "Haswell")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def batch(cfg, seed, rows, length):
    from searche1_jax.train.batching import pack
    rng = np.random.default_rng(seed)
    seqs, masks = [], []
    for _ in range(rows):
        p = int(rng.integers(8, length // 4))
        r = int(rng.integers(length // 2, length - p))
        seqs.append(list(rng.integers(0, cfg.vocab_size, p + r)))
        masks.append([0] * p + [1] * r)
    b = pack(seqs, masks, length=length)
    b["advantages"] = rng.normal(size=rows).astype(np.float32)
    return b


def block(tree):
    jax.tree.map(lambda x: x.block_until_ready(), tree)


def _hyper(lr):
    from searche1_jax.train.steps import hyper
    return hyper(lr=lr, weight_decay=0.01, grad_clip=1.0, kl_coef=0.001, entropy_coef=0.001, temperature=1.0,
                 ofsd_temperature=1.0)


def _barrier():
    from searche1_jax.model.speed import SpeedPolicy
    return SpeedPolicy.for_backend().logit_barrier


def single_runs(cfg, binder, seeds, lrs, batches, micro):
    from searche1_jax.model.create import create_model
    from searche1_jax.train.batching import to_micro
    from searche1_jax.train.state import params_of
    from searche1_jax.train.steps import StepConfig, make_steps
    step_times = []
    t0 = time.perf_counter()
    steps = make_steps(binder, StepConfig(grpo_chunk=128, logit_barrier=_barrier()))
    for seed, lr in zip(seeds, lrs):
        params = params_of(create_model(cfg, seed=seed))
        ref = jax.tree.map(jnp.copy, params)
        h = _hyper(lr)
        state = steps.init(params, h)
        for i, b in enumerate(batches):
            t = time.perf_counter()
            b = dict(b, old_logps=steps.logps(params, b["tokens"], b["valid"], h),
                     ref_logps=steps.logps(ref, b["tokens"], b["valid"], h))
            params, state, m = steps.grpo(params, state, to_micro(b, micro), h)
            block(params)
            if i:
                step_times.append(time.perf_counter() - t)
    return time.perf_counter() - t0, float(np.median(step_times)) * len(seeds)


def population(cfg, binder, seeds, lrs, batches, micro, mesh):
    from searche1_jax.model.create import create_model
    from searche1_jax.train.layout import Population, stack
    from searche1_jax.train.state import params_of
    from searche1_jax.train.steps import StepConfig, make_steps
    n = len(seeds)
    t0 = time.perf_counter()
    layout = Population(n, mesh)
    steps = make_steps(binder, StepConfig(grpo_chunk=128, logit_barrier=_barrier()), population=True, mesh=layout.mesh)
    hyper = layout.hyper([_hyper(lr) for lr in lrs])
    params = layout.place(stack([params_of(create_model(cfg, seed=s)) for s in seeds]))
    ref = jax.tree.map(jnp.copy, params)
    state = steps.init(params, hyper)
    step_times = []
    for i, b in enumerate(batches):
        t = time.perf_counter()
        tiled = layout.place({k: np.broadcast_to(v, (n,) + v.shape) for k, v in b.items()})
        b = dict(tiled, old_logps=steps.logps(params, tiled["tokens"], tiled["valid"], hyper),
                 ref_logps=steps.logps(ref, tiled["tokens"], tiled["valid"], hyper))
        micro_b = layout.place({k: v.reshape((n, -1, micro) + v.shape[2:]) for k, v in b.items()})
        params, state, m = steps.grpo(params, state, micro_b, hyper)
        block(params)
        if i:
            step_times.append(time.perf_counter() - t)
    return time.perf_counter() - t0, float(np.median(step_times))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--micro", type=int, default=4)
    args = ap.parse_args()

    from searche1_jax.model.config import get_preset
    from searche1_jax.model.create import create_model
    from searche1_jax.train.layout import member_mesh
    from searche1_jax.train.state import Binder

    cfg = get_preset(args.preset, dtype="float32", remat=False)
    binder = Binder(create_model(cfg, seed=0))
    seeds = list(range(args.members))
    lrs = [1e-3 * (i + 1) for i in range(args.members)]
    batches = [batch(cfg, s, args.rows, args.length) for s in range(args.steps)]
    mesh = member_mesh(args.members)
    layout = f"member mesh {dict(mesh.shape)}" if mesh else "1 device, no mesh"
    print(f"{args.members} members x {args.steps} GRPO steps, preset {args.preset}, {args.rows} rows x "
          f"{args.length} tokens, {jax.device_count()} {jax.devices()[0].platform} device(s): {layout}; "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    seq_total, seq_step = single_runs(cfg, binder, seeds, lrs, batches, args.micro)
    print(f"sequential single runs: {seq_total:.1f} s total, {seq_step:.3f} s per step (all members)", flush=True)
    pop_total, pop_step = population(cfg, binder, seeds, lrs, batches, args.micro, mesh)
    print(f"vmapped population:     {pop_total:.1f} s total, {pop_step:.3f} s per step (all members)", flush=True)
    print(f"speed-up (sequential / population): total {seq_total / pop_total:.2f}x, "
          f"steady-state step {seq_step / pop_step:.2f}x; load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
