"""How the GRPO train step aggregates its loss over micro-batches, against a hand-written oracle.

agg="micro_token_mean" pins Search-R1's vendored veRL: `verl/workers/actor/dp_actor.py::
update_policy` takes each micro-batch's `masked_mean` of the pg, k3-KL ("low_var_kl") and entropy
terms of `verl/trainer/ppo/core_algos.py` (pg + β·kl − c_H·entropy), divides it by the number of
micro-batches (gradient accumulation) and sums the gradients: the mini-batch loss is the plain
mean of micro-batch token-means. agg="token-mean" (our default) is the exact token mean.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from searche1_jax.model.config import get_preset
from searche1_jax.model.create import create_model
from searche1_jax.train import steps as steps_module
from searche1_jax.train.batching import pack, to_micro
from searche1_jax.train.state import Binder, params_of
from searche1_jax.train.steps import StepConfig, hyper, make_steps

CFG = get_preset("tiny")
# KL and entropy coefficients large enough that all three terms shape the gradient; no global-norm
# clip (the update, params - gradient under SGD(1.0), reads the gradient itself)
HYPER = hyper(lr=1.0, weight_decay=0.0, grad_clip=1e9, kl_coef=0.1, entropy_coef=0.05,
              temperature=1.0, ofsd_temperature=1.0)
CLIP = 0.2
MICRO, LENGTH = 2, 24
# response tokens per row: 4 micro-batches of 2 rows holding 3, 10, 24 and 34 trained tokens
RESPONSES = [(1, 2), (4, 6), (11, 13), (16, 18)]


def uneven_batch(seed=0):
    """[8, LENGTH] rows: a 3-token prompt (masked), then the response lengths of RESPONSES."""
    rng = np.random.default_rng(seed)
    seqs, masks = [], []
    for r in (r for pair in RESPONSES for r in pair):
        seqs.append(list(rng.integers(0, CFG.vocab_size, 3 + r)))
        masks.append([0] * 3 + [1] * r)
    b = pack(seqs, masks, length=LENGTH)
    b["advantages"] = rng.normal(size=len(seqs)).astype(np.float32)
    return b


@pytest.fixture(scope="module")
def setup():
    model = create_model(CFG, seed=1)
    binder = Binder(model)
    params = params_of(model)
    ref_params = params_of(create_model(CFG, seed=2))  # a different reference: KL > 0
    logps = make_steps(binder, StepConfig(grpo_chunk=64)).logps
    b = uneven_batch()
    rng = np.random.default_rng(1)
    # rollout log-probs off the current policy, so ratios leave the clip range on some tokens
    b["old_logps"] = (np.asarray(logps(params, b["tokens"], b["valid"], HYPER))
                      + rng.normal(0, 0.3, (8, LENGTH - 1))).astype(np.float32)
    b["ref_logps"] = np.asarray(logps(ref_params, b["tokens"], b["valid"], HYPER))
    return binder, params, b


@pytest.fixture
def sgd_steps(monkeypatch):
    """Steps whose optimiser is SGD(1.0): the update is params − gradient."""
    monkeypatch.setattr(steps_module, "_adamw_alone", lambda h: optax.sgd(1.0))
    return lambda binder, agg: make_steps(binder, dataclasses.replace(StepConfig(grpo_chunk=64), agg=agg))


def oracle(binder, params, b, agg):
    """Loss and gradient, written from the formulas: full-vocab log-softmax, PPO clip, k3 KL
    clamped to [-10, 10], entropy; per micro-batch k (rows 2k, 2k+1) its token sum and count,
    then Σ sums / Σ counts (token-mean) or the mean over k of sum_k / count_k (micro_token_mean)."""
    tokens, valid = jnp.asarray(b["tokens"]), jnp.asarray(b["valid"])
    mask = jnp.asarray(b["loss_mask"][:, 1:], jnp.float32)
    adv = jnp.asarray(b["advantages"])[:, None]

    def loss_fn(p):
        logits = binder.bind(p)(tokens, valid)[:, :-1].astype(jnp.float32)
        logp_all = jax.nn.log_softmax(logits, axis=-1)
        lp = jnp.take_along_axis(logp_all, tokens[:, 1:, None], axis=-1)[..., 0]
        entropy = -(jnp.exp(logp_all) * logp_all).sum(-1)
        ratio = jnp.exp(lp - b["old_logps"])
        pg = jnp.maximum(-adv * ratio, -adv * jnp.clip(ratio, 1 - CLIP, 1 + CLIP))
        d = b["ref_logps"] - lp
        kl = jnp.clip(jnp.exp(d) - d - 1, -10.0, 10.0)
        per = (pg + HYPER["kl_coef"] * kl - HYPER["entropy_coef"] * entropy) * mask
        sums = [per[2 * k:2 * k + 2].sum() for k in range(4)]
        counts = [mask[2 * k:2 * k + 2].sum() for k in range(4)]
        if agg == "token-mean":
            return sum(sums) / sum(counts)
        return sum(s / n for s, n in zip(sums, counts)) / 4

    return jax.value_and_grad(loss_fn)(params)


def step_grads(steps, params, batch):
    p0 = jax.tree.map(jnp.array, params)
    new, _, m = steps.grpo(jax.tree.map(jnp.array, params), steps.init(params, HYPER), batch, HYPER)
    return jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), p0, new), m


def rel_diff(a, b):
    a, b = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)]) for t in (a, b))
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("agg", ["micro_token_mean", "token-mean"])
def test_grpo_step_loss_and_gradient_equal_the_hand_written_aggregation(setup, sgd_steps, agg):
    binder, params, b = setup
    counts = b["loss_mask"][:, 1:].reshape(4, MICRO, -1).sum((1, 2))
    assert list(counts) == [3, 10, 24, 34]  # very different token counts per micro-batch
    grads, m = step_grads(sgd_steps(binder, agg), params, to_micro(b, MICRO))
    want_loss, want_grads = oracle(binder, params, b, agg)
    np.testing.assert_allclose(float(m["loss"]), float(want_loss), rtol=1e-5)
    assert float(m["tokens"]) == counts.sum()
    assert rel_diff(grads, want_grads) < 1e-5
    # for these shapes the two aggregations are far apart: the test tells them apart
    other = "token-mean" if agg == "micro_token_mean" else "micro_token_mean"
    other_loss, other_grads = oracle(binder, params, b, other)
    assert rel_diff(other_grads, want_grads) > 0.1
    assert abs(float(other_loss) - float(want_loss)) > 1e-2


def test_micro_token_mean_leaves_an_all_padding_micro_batch_out(setup, sgd_steps):
    """A micro-batch of padding rows (a batch padded to whole mini-batches) changes nothing."""
    binder, params, b = setup
    padded = {k: np.concatenate([v, np.zeros((MICRO,) + v.shape[1:], v.dtype)]) for k, v in b.items()}
    steps = sgd_steps(binder, "micro_token_mean")
    g4, m4 = step_grads(steps, params, to_micro(b, MICRO))
    g5, m5 = step_grads(steps, params, to_micro(padded, MICRO))
    np.testing.assert_allclose(float(m5["loss"]), float(m4["loss"]), rtol=1e-6)
    assert rel_diff(g5, g4) < 1e-5


def test_steps_refuse_an_aggregation_the_trainer_does_not_implement(setup):
    binder, _, _ = setup
    with pytest.raises(ValueError, match="config.grpo.agg must be one of"):
        make_steps(binder, StepConfig(agg="seq-mean-token-mean"))
