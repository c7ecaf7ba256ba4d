"""Search-R1 conformance: the training recipe (METHOD §2), values worked out by hand.

Search-R1's GRPO scripts (`train_grpo.sh`) run veRL with `actor_rollout_ref.actor.optim.lr=1e-6`,
`lr_warmup_steps_ratio=0.285`, `total_training_steps=1005`, `ppo_mini_batch_size=256`,
`train_batch_size=512`, `rollout.n=5`, `kl_loss_type=low_var_kl`, and rollout top-p left at
veRL's default (1.0 in the config, 0.95 in vLLM's sampling for GRPO: METHOD §2).
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from searche1_jax import config as C
from searche1_jax.rl.grpo import kl_penalty
from searche1_jax.train.steps import lr_at

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_k3_is_clamped_to_ten_with_zero_gradient_where_it_binds():
    """veRL `verl/trainer/ppo/core_algos.py` `kl_penalty(..., "low_var_kl")`: kld = exp(ref - logp)
    - (ref - logp) - 1, then `torch.clamp(kld, min=-10, max=10)`. Hand values for ref - logp =
    -3, 0, 1, 2.5, 3, 10: 2.0498, 0, 0.71828, 8.6825, 16.0855 -> 10, 22015.47 -> 10."""
    d = np.array([-3.0, 0.0, 1.0, 2.5, 3.0, 10.0], np.float64)  # ref - logp
    lp = np.zeros_like(d, np.float32)
    ref = d.astype(np.float32)
    raw = np.exp(d) - d - 1
    assert raw[-1] > 22015 and raw[4] > 10 > raw[3]
    got = kl_penalty(jnp.asarray(lp), jnp.asarray(ref), "k3")
    np.testing.assert_allclose(np.asarray(got), [2.0497871, 0.0, 0.7182818, 8.6824940, 10.0, 10.0], rtol=1e-6)
    # d/dlogp of exp(ref - logp) - (ref - logp) - 1 is 1 - exp(d); 0 where the clamp binds
    grad = jax.grad(lambda x: kl_penalty(x, jnp.asarray(ref), "k3").sum())(jnp.asarray(lp))
    want_grad = np.where(raw > 10.0, 0.0, 1.0 - np.exp(d))
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-5, atol=1e-6)


def test_lr_of_every_step_for_1005_steps():
    """veRL's actor optimiser uses `get_constant_schedule_with_warmup(num_warmup_steps=
    int(0.285 * 1005) = 286)` and steps the scheduler once per training step: lr(s) =
    1e-6 * min(1, s / 286), so step 0 runs at 0, step 143 at 5e-7, 1e-6 from step 286 on."""
    lr, kw = 1e-6, dict(total_steps=1005, warmup_ratio=0.285)
    got = np.array([lr_at(s, lr, **kw) for s in range(1005)])
    want = np.array([1e-6 * s / 286 if s < 286 else 1e-6 for s in range(1005)])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    assert got[0] == 0.0 and got[143] == pytest.approx(5e-7, rel=1e-12)
    assert got[285] < 1e-6 and (got[286:] == 1e-6).all()
    # no warm-up: constant from step 0
    assert [lr_at(s, lr, total_steps=1005, warmup_ratio=0.0) for s in (0, 1, 500, 1004)] == [lr] * 4


@pytest.mark.parametrize("name", ["qwen3b.py", "qwen7b.py"])
def test_paper_configs_hold_search_r1_numbers(name):
    """512 questions x 5 = 2,560 trajectories a step; ppo_mini_batch_size 256 counts trajectories,
    so 10 AdamW updates a step (the loop takes one update per `grpo.mini_batch` trajectories:
    tests/train/test_loop.py pins that count); lr 1e-6 warmed over 0.285 of the steps; KL k3
    (low_var_kl) at 0.001; clip 0.2; top-p 0.95 at temperature 1; 4 search turns, top-3."""
    c = C.from_config_dict(C.load_config_file(os.path.join(ROOT, "configs", name)))
    trajectories = c.grpo.questions_per_step * c.rollout.group_size
    assert (c.grpo.questions_per_step, c.rollout.group_size, trajectories) == (512, 5, 2560)
    assert c.grpo.mini_batch == 256 and trajectories // c.grpo.mini_batch == 10
    assert (c.train.lr, c.train.warmup_ratio, c.train.weight_decay, c.train.grad_clip) == (1e-6, 0.285, 0.01, 1.0)
    assert (c.grpo.kl_estimator, c.grpo.kl_coef, c.grpo.clip_eps, c.grpo.entropy_coef) == ("k3", 0.001, 0.2, 0.001)
    assert (c.rollout.temperature, c.rollout.top_p, c.rollout.top_k) == (1.0, 0.95, 0)
    assert (c.rollout.max_turns, c.retrieval.topk) == (4, 3)
    assert (c.rollout.max_turn_tokens, c.rollout.max_obs_tokens) == (500, 500)
    assert (c.grpo.epochs, c.grpo.agg, c.rollout.chat_template, c.rollout.reward_text) == (
        1, "token-mean", "auto", "policy")
