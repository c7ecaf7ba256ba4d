"""The LM head at the loss positions only (config.train.head_on_loss_tokens): the positions by
hand, and every train step gives what the head at every position gives (the reference path)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from searche1_jax.model.config import get_preset
from searche1_jax.model.create import create_model
from searche1_jax.shapes import policy_token_bound
from searche1_jax.train import steps as steps_module
from searche1_jax.train.batching import head_positions, to_micro
from searche1_jax.train.distill import Pair, ofsd_arrays
from searche1_jax.train.state import Binder, params_of
from searche1_jax.train.steps import StepConfig, hyper, make_steps
from tests.train.batches import random_grpo_batch
from tests.train.test_distill import CharTokenizer, corrected_group

CFG = get_preset("tiny")
HYPER = hyper(lr=1e-2, weight_decay=0.01, grad_clip=1.0, kl_coef=0.001, entropy_coef=0.001,
              temperature=0.9, ofsd_temperature=1.0)


def test_head_positions_by_hand():
    mask = np.array([[0, 0, 1, 1, 0, 1, 0, 0],     # tokens 2, 3, 5: predicted at 1, 2, 4
                     [0, 0, 0, 0, 0, 0, 0, 1],     # token 7: at 6
                     [0, 0, 0, 0, 0, 0, 0, 0]])    # a padding row
    np.testing.assert_array_equal(head_positions(mask, bucket=4), [[1, 2, 4, 0], [6, 0, 0, 0], [0, 0, 0, 0]])
    # K = at_least, or the most positions a row has (3) rounded up to the bucket; at most T - 1 = 7
    assert head_positions(mask, bucket=2).shape == (3, 4)
    assert head_positions(mask, bucket=4, at_least=5).shape == (3, 5)
    assert head_positions(mask, bucket=4, at_least=3).shape == (3, 3)
    assert head_positions(mask, bucket=2, at_least=2).shape == (3, 4)   # a row has more than at_least
    assert head_positions(mask, bucket=8, at_least=2).shape == (3, 7)   # 8, capped at T - 1
    assert head_positions(mask, bucket=4, at_least=9).shape == (3, 7)
    assert head_positions(mask[2:], bucket=4).shape == (1, 4)
    with pytest.raises(ValueError, match="position 1"):
        head_positions(np.array([[0, 1, 1, 0]]), bucket=2)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        head_positions(np.zeros(5, np.int32), bucket=2)


def test_policy_token_bound():
    assert policy_token_bound(2, 64, 448) == 192          # 3 turns of 64 (the demo)
    assert policy_token_bound(4, 500, 1000) == 1000       # the response budget binds first


@pytest.fixture(scope="module")
def model():
    return create_model(CFG, seed=1)


@pytest.fixture
def sgd(monkeypatch):
    """AdamW replaced by SGD(1.0): Adam would amplify the last bits of near-zero gradients."""
    monkeypatch.setattr(steps_module, "_adamw_alone", lambda h: optax.sgd(1.0))


def copy(tree):
    return jax.tree.map(jnp.array, tree)


def assert_same_update(a, b, atol=2e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol)


@pytest.mark.parametrize("agg", ["token-mean", "micro_token_mean"])
def test_grpo_step_at_the_loss_positions_equals_the_step_at_every_position(model, sgd, agg):
    binder = Binder(model)
    steps = make_steps(binder, StepConfig(grpo_chunk=16, agg=agg))
    params = params_of(model)
    full = random_grpo_batch(CFG.vocab_size, seed=4, rows=8, length=32)
    full["loss_mask"][:, -3:] = 0  # a trajectory's last tokens need not be trained
    full["loss_mask"][5] = 0       # a row without any (a padding row, or an all-observation one)
    ref = params_of(create_model(CFG, seed=3))
    for which, p in (("old_logps", params), ("ref_logps", ref)):
        full[which] = np.array(steps.logps(p, full["tokens"], full["valid"], HYPER))
    idx = head_positions(full["loss_mask"], bucket=8)
    assert idx.shape[1] < 31  # fewer positions than every one
    at = dict(full, head_idx=idx)
    for which, p in (("old_logps", params), ("ref_logps", ref)):
        at[which] = np.asarray(steps.logps(p, full["tokens"], full["valid"], HYPER, idx))
        # the log-probs the pass gives at the positions are the full pass's there
        np.testing.assert_allclose(at[which], np.take_along_axis(full[which], idx, axis=1), rtol=1e-6, atol=1e-6)
    # old != current policy at a few tokens, so the clip and the ratio both take part
    bump = np.where(np.arange(at["old_logps"].shape[1]) % 3 == 0, 0.3, 0.0).astype(np.float32)
    at["old_logps"] = at["old_logps"] + bump
    np.put_along_axis(full["old_logps"], idx, at["old_logps"], axis=1)
    p_full, _, m_full = steps.grpo(copy(params), steps.init(params, HYPER), to_micro(full, 4), HYPER)
    p_at, _, m_at = steps.grpo(copy(params), steps.init(params, HYPER), to_micro(at, 4), HYPER)
    assert set(m_at) == set(m_full)
    for k in m_full:
        np.testing.assert_allclose(float(m_at[k]), float(m_full[k]), rtol=2e-5, atol=1e-7, err_msg=k)
    assert float(m_full["clip_frac"]) > 0
    assert float(m_at["tokens"]) == full["loss_mask"][:, 1:].sum()
    assert_same_update(p_at, p_full)


def test_sft_step_at_the_loss_positions_equals_the_step_at_every_position(model, sgd):
    steps = make_steps(Binder(model), StepConfig(grpo_chunk=16))
    params = params_of(model)
    full = random_grpo_batch(CFG.vocab_size, seed=7, rows=4, length=24)
    del full["advantages"]
    at = dict(full, head_idx=head_positions(full["loss_mask"], bucket=4, at_least=6))
    p_full, _, m_full = steps.sft(copy(params), steps.init(params, HYPER), to_micro(full, 2), HYPER)
    p_at, _, m_at = steps.sft(copy(params), steps.init(params, HYPER), to_micro(at, 2), HYPER)
    for k in m_full:
        np.testing.assert_allclose(float(m_at[k]), float(m_full[k]), rtol=1e-5, err_msg=k)
    # the loss is the token-mean NLL of the loss tokens: numpy over the model's full logits
    logits = np.asarray(model(jnp.asarray(full["tokens"]), jnp.asarray(full["valid"])), np.float64)
    logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    nll = [-logp[b, t - 1, full["tokens"][b, t]] for b, t in zip(*np.nonzero(full["loss_mask"]))]
    np.testing.assert_allclose(float(m_at["sft_loss"]), np.mean(nll), rtol=1e-5)
    assert_same_update(p_at, p_full)


def test_ofsd_arrays_of_the_sampled_tokens_only_give_the_same_kl(model):
    """sampled_only keeps the positions of the KL mask and drops the observation's: the OFSD
    step's loss and update are the same."""
    tok = CharTokenizer()
    group = corrected_group(tok)
    full = ofsd_arrays([Pair(0, 0, 1)], [group], tok, rendering="queries", length_bucket=8, rows_multiple=2)
    only = ofsd_arrays([Pair(0, 0, 1)], [group], tok, rendering="queries", length_bucket=8, rows_multiple=2,
                       sampled_only=True)
    keep = full["kl_mask"][0] != 0
    n = int(keep.sum())
    assert only["student_idx"].shape[1] < full["student_idx"].shape[1]
    for k in ("student_idx", "teacher_idx"):
        np.testing.assert_array_equal(only[k][0, :n], full[k][0][keep])
    assert only["kl_mask"][0, :n].all() and not only["kl_mask"][0, n:].any() and not only["kl_mask"][1].any()
    for k in ("tokens", "valid", "teacher_tokens", "teacher_valid"):
        np.testing.assert_array_equal(only[k], full[k])
    assert max(full["tokens"].max(), full["teacher_tokens"].max()) < CFG.vocab_size  # ASCII ids
    params = params_of(model)
    teacher = params_of(create_model(CFG, seed=6))
    steps = make_steps(Binder(model), StepConfig(ofsd_chunk=16))
    p_full, _, m_full = steps.ofsd(copy(params), steps.init(params, HYPER), teacher, to_micro(full, 2), HYPER)
    p_only, _, m_only = steps.ofsd(copy(params), steps.init(params, HYPER), teacher, to_micro(only, 2), HYPER)
    assert float(m_full["ofsd_loss"]) > 0
    np.testing.assert_allclose(float(m_only["ofsd_loss"]), float(m_full["ofsd_loss"]), rtol=1e-5)
    assert_same_update(p_only, p_full, atol=1e-6)


def test_a_padded_batch_of_the_positions_scores_nothing_more(model):
    """Zero padding (other processes' longer K, a population's pad_stack) adds position 0 slots,
    whose target is a prompt token: the loss is unchanged."""
    steps = make_steps(Binder(model), StepConfig(grpo_chunk=16))
    params = params_of(model)
    b = random_grpo_batch(CFG.vocab_size, seed=11, rows=2, length=16)
    del b["advantages"]
    idx = head_positions(b["loss_mask"], bucket=4)
    wide = np.zeros((2, idx.shape[1] + 4), np.int32)
    wide[:, :idx.shape[1]] = idx
    h = HYPER
    _, _, m1 = steps.sft(copy(params), steps.init(params, h), to_micro(dict(b, head_idx=idx), 2), h)
    _, _, m2 = steps.sft(copy(params), steps.init(params, h), to_micro(dict(b, head_idx=wide), 2), h)
    np.testing.assert_allclose(float(m2["sft_loss"]), float(m1["sft_loss"]), rtol=1e-6)
    assert float(m2["tokens"]) == float(m1["tokens"])

