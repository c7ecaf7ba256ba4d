"""The LM head at the loss positions only (config.train.head_on_loss_tokens) against the head at
every position: the demo's train programs, both sides in the same run, alternated call by call.

SmolLM2-135M's shapes with random weights (the FLOPs do not depend on the values), fp32,
remat, layers unrolled: the demo's model settings. Rows are laid out like the demo's
trajectories (configs/demo.py: 2 searches, max_turn_tokens 64, max_obs_tokens 96): a prompt,
then three policy turns (the loss tokens) with an observation after each of the first two, to
`--length` tokens or less. K = `batching.head_positions` with the demo's floor
(max_turns + 1) x max_turn_tokens = 192: 192 of 511 positions.

    python benchmarks/head_positions.py [--length 512] [--rounds 3]

Programs, each at the demo's sizes: `sft` (8 rows, micro-batch 2), `grpo` (one PPO update of 4
trajectories, micro-batch 2), `logps` (the old / reference log-prob pass, 2 rows).
"""
import argparse
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402


def demo_rows(rng, rows: int, length: int, vocab: int, turn: int = 64, obs: int = 96):
    """Token lists and loss masks: prompt, (policy turn, observation) x 2, policy turn."""
    seqs, masks = [], []
    for _ in range(rows):
        turns = [int(rng.integers(turn // 3, turn + 1)) for _ in range(3)]
        body = sum(turns) + 2 * obs
        prompt = int(rng.integers(max(2, length - body - 96), length - body + 1))
        mask = [0] * prompt
        for i, n in enumerate(turns):
            mask += [1] * n + ([0] * obs if i < 2 else [])
        seqs.append(rng.integers(0, vocab, len(mask)).tolist())
        masks.append(mask)
    return seqs, masks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--length", type=int, default=512, help="bucket length T (rows are shorter)")
    ap.add_argument("--rounds", type=int, default=3, help="timed calls a side, alternated")
    ap.add_argument("--chunk", type=int, default=256, help="logit chunk (the demo's grpo.logit_chunk)")
    args = ap.parse_args()

    import jax

    from benchmarks.common import alternate
    from searche1_jax.model.config import get_preset
    from searche1_jax.model.create import create_model
    from searche1_jax.model.speed import SpeedPolicy
    from searche1_jax.shapes import policy_token_bound
    from searche1_jax.train.batching import head_positions, pack, to_micro
    from searche1_jax.train.state import Binder, params_of
    from searche1_jax.train.steps import StepConfig, hyper, make_steps

    cfg = get_preset("smollm2-135m").replace(dtype="float32", param_dtype="float32", remat=True,
                                              scan_layers=False)
    model = create_model(cfg, seed=0)
    params = params_of(model)
    steps = make_steps(Binder(model), StepConfig(grpo_chunk=args.chunk,
                                                 logit_barrier=SpeedPolicy.for_backend().logit_barrier))
    h = hyper(lr=1e-6, weight_decay=0.01, grad_clip=1.0, kl_coef=0.001, entropy_coef=0.001,
              temperature=1.0, ofsd_temperature=1.0)
    rng = np.random.default_rng(0)
    seqs, masks = demo_rows(rng, 8, args.length, cfg.vocab_size)
    full = pack(seqs, masks, length=args.length)
    floor = policy_token_bound(2, 64, 448)
    idx = head_positions(full["loss_mask"], bucket=128, at_least=floor)
    at = dict(full, head_idx=idx)
    print(f"{jax.devices()[0].device_kind}; T = {args.length}, loss tokens a row "
          f"{full['loss_mask'].sum(1).min()}-{full['loss_mask'].sum(1).max()}, "
          f"head positions K = {idx.shape[1]} of {args.length - 1}")

    opt = {"state": steps.init(params, h)}
    p = {"params": jax.tree.map(lambda x: x.copy(), params)}

    def sft(batch):
        def call():
            p["params"], opt["state"], m = steps.sft(p["params"], opt["state"], to_micro(batch, 2), h)
            return float(m["sft_loss"])
        return call

    grpo_rows = {k: v[:4] for k, v in full.items()}
    grpo_rows["advantages"] = rng.normal(size=4).astype(np.float32)
    g_full = dict(grpo_rows)
    g_at = dict(grpo_rows, head_idx=idx[:4])
    for g, extra in ((g_full, ()), (g_at, (g_at["head_idx"],))):
        lp = np.asarray(steps.logps(params, g["tokens"], g["valid"], h, *extra))
        g["old_logps"] = g["ref_logps"] = lp

    def grpo(batch):
        def call():
            p["params"], opt["state"], m = steps.grpo(p["params"], opt["state"], to_micro(batch, 2), h)
            return float(m["loss"])
        return call

    def logps(batch):
        extra = (batch["head_idx"][:2],) if "head_idx" in batch else ()
        return lambda: np.asarray(steps.logps(p["params"], batch["tokens"][:2], batch["valid"][:2], h, *extra))

    results = {}
    for name, make, a, b in (("sft", sft, full, at), ("grpo", grpo, g_full, g_at), ("logps", logps, full, at)):
        fns = {"every position": make(a), "loss positions": make(b)}
        for fn in fns.values():  # compile
            fn()
        times, _ = alternate(fns, args.rounds)
        med = {k: statistics.median(v) for k, v in times.items()}
        results[name] = med
        print(f"{name:6s} every position {med['every position']:7.2f} s   loss positions "
              f"{med['loss positions']:7.2f} s   ratio {med['every position'] / med['loss positions']:.3f}x",
              flush=True)
    flops_full = 2 * (cfg.num_params - cfg.vocab_size * cfg.d_model) + 2 * cfg.d_model * cfg.vocab_size
    print(f"(head share of a token's matmul FLOPs: {2 * cfg.d_model * cfg.vocab_size / flops_full:.1%})")


if __name__ == "__main__":
    main()
