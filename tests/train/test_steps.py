"""GRPO and OFSD train steps on the tiny model: they learn, accumulate exactly, and shard exactly;
the lr schedule, the optimiser and the traced hyper-parameters against independent oracles."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from searche1_jax.model.config import get_preset
from searche1_jax.model.create import create_model, model_from_arrays
from searche1_jax.model.sharding import make_mesh, named_sharding
from searche1_jax.train import steps as steps_module
from searche1_jax.train.batching import pack, to_micro
from searche1_jax.train.state import Binder, flatten, params_of
from searche1_jax.train.steps import StepConfig, adamw, hyper, hyper_of, make_steps
from tests.train.batches import random_grpo_batch

CFG = get_preset("tiny")
# the old single-run defaults: AdamW lr 1e-2, wd 0.01, clip 1.0, METHOD §2 coefficients, temperature 1
HYPER = hyper(lr=1e-2, weight_decay=0.01, grad_clip=1.0, kl_coef=0.001, entropy_coef=0.001,
              temperature=1.0, ofsd_temperature=1.0)


def grpo_batch(seed=0, rows=8, length=24):
    return random_grpo_batch(CFG.vocab_size, seed=seed, rows=rows, length=length)


def with_logps(batch, logps_fn, params, ref_params, hyp=HYPER):
    b = dict(batch)
    b["old_logps"] = np.asarray(logps_fn(params, batch["tokens"], batch["valid"], hyp))
    b["ref_logps"] = np.asarray(logps_fn(ref_params, batch["tokens"], batch["valid"], hyp))
    return b


@pytest.fixture(scope="module")
def setup():
    model = create_model(CFG, seed=1)
    binder = Binder(model)
    step_cfg = StepConfig(grpo_chunk=64)
    return model, binder, make_steps(binder, step_cfg), step_cfg


@pytest.fixture
def sgd(monkeypatch):
    """Steps built while AdamW is plain SGD(1.0), after the global-norm clip: Adam's normalisation
    would amplify float rounding of near-zero gradients, hiding what the exactness tests check."""
    monkeypatch.setattr(steps_module, "_adamw_alone", lambda h: optax.sgd(1.0))
    return lambda binder, cfg: make_steps(binder, cfg)


def copy(tree):
    return jax.tree.map(jnp.array, tree)


def test_grpo_step_changes_params_and_lowers_its_own_loss(setup):
    model, binder, steps, _ = setup
    params = params_of(model)
    batch = with_logps(grpo_batch(), steps.logps, params, params)
    p0 = copy(params)
    p1, s1, m1 = steps.grpo(copy(params), steps.init(params, HYPER), to_micro(batch, 4), HYPER)
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(p1)))
    # same batch again (old logps from the original policy): the surrogate loss went down
    _, _, m2 = steps.grpo(copy(p1), s1, to_micro(batch, 4), HYPER)
    assert float(m2["loss"]) < float(m1["loss"])
    assert float(m1["tokens"]) == batch["loss_mask"][:, 1:].sum()


def test_micro_batch_accumulation_equals_one_big_batch(setup, sgd):
    model, binder, _, step_cfg = setup
    steps = sgd(binder, step_cfg)
    params = params_of(model)
    batch = with_logps(grpo_batch(seed=3), steps.logps, params, params)
    a, _, ma = steps.grpo(copy(params), steps.init(params, HYPER), to_micro(batch, 8), HYPER)
    b, _, mb = steps.grpo(copy(params), steps.init(params, HYPER), to_micro(batch, 2), HYPER)
    np.testing.assert_allclose(float(ma["loss"]), float(mb["loss"]), rtol=1e-5, atol=1e-7)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)


def ofsd_batch(seed=0, rows=4, length=24, extra=6):
    """Teacher rows = student rows with `extra` context tokens inserted after the prompt."""
    rng = np.random.default_rng(seed)
    s_seqs, s_masks, t_seqs, t_masks, s_idx, t_idx, kl = [], [], [], [], [], [], []
    r_len = 10
    for _ in range(rows):
        p = int(rng.integers(3, 6))
        prompt = list(rng.integers(0, CFG.vocab_size, p))
        resp = list(rng.integers(0, CFG.vocab_size, r_len))
        ctx = list(rng.integers(0, CFG.vocab_size, extra))
        s_seqs.append(prompt + resp)
        s_masks.append([0] * p + [1] * r_len)
        t_seqs.append(prompt + ctx + resp)
        t_masks.append([0] * (p + extra + r_len))
        s_idx.append([p - 1 + j for j in range(r_len)])
        t_idx.append([p + extra - 1 + j for j in range(r_len)])
        m = [1] * r_len
        m[3] = 0  # an observation token inside the response
        kl.append(m)
    s = pack(s_seqs, s_masks, length=length)
    t = pack(t_seqs, t_masks, length=length + extra)
    return {"tokens": s["tokens"], "valid": s["valid"], "teacher_tokens": t["tokens"],
            "teacher_valid": t["valid"], "student_idx": np.asarray(s_idx, np.int32),
            "teacher_idx": np.asarray(t_idx, np.int32), "kl_mask": np.asarray(kl, np.int32)}


def test_ofsd_step_changes_params_and_lowers_its_own_loss(setup):
    model, binder, _, _ = setup
    params = params_of(model)
    teacher = params_of(create_model(CFG, seed=2))  # a different teacher: KL > 0
    steps = make_steps(binder, StepConfig(ofsd_chunk=16))
    batch = to_micro(ofsd_batch(), 2)
    p1, s1, m1 = steps.ofsd(copy(params), steps.init(params, HYPER), teacher, batch, HYPER)
    _, _, m2 = steps.ofsd(copy(p1), s1, teacher, batch, HYPER)
    assert float(m1["ofsd_loss"]) > 0
    assert float(m2["ofsd_loss"]) < float(m1["ofsd_loss"])


def test_ofsd_live_equals_ofsd_with_a_copy_of_the_params_as_teacher(setup):
    """ofsd_live(p, ...) = ofsd(p, ..., teacher=copy(p)): the live teacher (and a snapshot round
    with one update) needs no second copy of the params; passing the same buffers as the donated
    params and the teacher would be refused by XLA ("a buffer that was previously donated")."""
    model, binder, _, _ = setup
    params = params_of(model)
    steps = make_steps(binder, StepConfig(ofsd_chunk=16))
    batch = to_micro(ofsd_batch(), 2)
    student = jax.tree.map(lambda x: x + 0.01 * jnp.sin(jnp.arange(x.size, dtype=x.dtype)).reshape(x.shape), params)
    p1, s1, m1 = steps.ofsd(copy(student), steps.init(student, HYPER), copy(student), batch, HYPER)
    p2, s2, m2 = steps.ofsd_live(copy(student), steps.init(student, HYPER), batch, HYPER)
    np.testing.assert_allclose(float(m2["ofsd_loss"]), float(m1["ofsd_loss"]), rtol=1e-6, atol=1e-9)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)
    assert float(m2["ofsd_loss"]) > 0  # the teacher sees the privileged context: a real update
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(p2), jax.tree.leaves(student)))


def test_ofsd_loss_matches_naive_full_vocab_kl(setup):
    """The step's loss == mean over unmasked response tokens of KL(p_T || p_S), numpy oracle."""
    model, binder, _, _ = setup
    params = params_of(model)
    teacher_model = create_model(CFG, seed=2)
    b = ofsd_batch(seed=5)
    steps = make_steps(binder, StepConfig(ofsd_chunk=7))
    _, _, m = steps.ofsd(copy(params), steps.init(params, HYPER), params_of(teacher_model), to_micro(b, 4), HYPER)
    s_logits = np.asarray(model(jnp.asarray(b["tokens"]), jnp.asarray(b["valid"])), np.float64)
    t_logits = np.asarray(teacher_model(jnp.asarray(b["teacher_tokens"]), jnp.asarray(b["teacher_valid"])), np.float64)
    kls = []
    for i in range(4):
        for j in range(b["kl_mask"].shape[1]):
            if b["kl_mask"][i, j]:
                zs, zt = s_logits[i, b["student_idx"][i, j]], t_logits[i, b["teacher_idx"][i, j]]
                ls = zs - np.logaddexp.reduce(zs)
                lt = zt - np.logaddexp.reduce(zt)
                kls.append((np.exp(lt) * (lt - ls)).sum())
    np.testing.assert_allclose(float(m["ofsd_loss"]), np.mean(kls), rtol=1e-4)


@pytest.mark.parametrize("agg", ["token-mean", "micro_token_mean"])
def test_grpo_step_on_8_devices_equals_single_device(setup, sgd, agg):
    """Whatever the aggregation, a micro-batch is its rows, not a device's share of them."""
    model, binder, _, step_cfg = setup
    step_cfg = dataclasses.replace(step_cfg, agg=agg)
    steps = sgd(binder, step_cfg)
    params = params_of(model)
    batch = to_micro(with_logps(grpo_batch(seed=9), steps.logps, params, params), 4)
    ref_params, _, ref_m = steps.grpo(copy(params), steps.init(params, HYPER), batch, HYPER)

    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded_model = model_from_arrays(CFG, {k: np.asarray(v) for k, v in flatten(params).items()}, mesh=mesh)
    sp = params_of(sharded_model)
    assert "tensor" in str(jax.tree.leaves(sp)[0].sharding.spec) or any(
        "fsdp" in str(x.sharding.spec) for x in jax.tree.leaves(sp))
    sb = {k: jax.device_put(v, named_sharding((None, "batch") + (None,) * (v.ndim - 2), v.shape, mesh))
          for k, v in batch.items()}
    sh_steps = sgd(Binder(sharded_model), step_cfg)
    out_params, _, m = sh_steps.grpo(sp, sh_steps.init(sp, HYPER), sb, HYPER)
    np.testing.assert_allclose(float(m["loss"]), float(ref_m["loss"]), rtol=1e-5, atol=1e-6)
    for x, y in zip(jax.tree.leaves(out_params), jax.tree.leaves(ref_params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5)


# ---- the host-side lr schedule, the optimiser and the traced hyper-parameters ----

def test_hyper_of_reads_every_field_of_the_config_and_takes_the_scheduled_lr():
    import ml_collections
    c = ml_collections.ConfigDict({
        "train": {"lr": 1e-3, "weight_decay": 0.05, "grad_clip": 2.0},
        "grpo": {"kl_coef": 0.01, "entropy_coef": 0.002},
        "rollout": {"temperature": 0.7}, "ofsd": {"temperature": 1.5}})
    want = dict(lr=1e-3, weight_decay=0.05, grad_clip=2.0, kl_coef=0.01, entropy_coef=0.002,
                temperature=0.7, ofsd_temperature=1.5)
    got = hyper_of(c)
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k].dtype == np.float32 and got[k] == np.float32(v), k
    assert hyper_of(c, lr=2.5e-4)["lr"] == np.float32(2.5e-4)


def test_adamw_of_hyper_equals_optax_clip_then_adamw():
    """`adamw(hyper)` with concrete numbers == optax's own clip-then-AdamW chain, update by update."""
    lr, wd, clip = 3e-3, 0.05, 0.5
    h = hyper(lr=lr, weight_decay=wd, grad_clip=clip, kl_coef=0.0, entropy_coef=0.0, temperature=1.0,
              ofsd_temperature=1.0)
    oracle = optax.chain(optax.clip_by_global_norm(clip), optax.adamw(lr, weight_decay=wd))
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32), "b": jnp.asarray(rng.normal(size=3), jnp.float32)}
    ours, theirs = adamw(h), oracle
    s_ours, s_theirs = ours.init(params), theirs.init(params)
    p_ours, p_theirs = params, params
    for scale in (1.0, 2.0, 3.0, 4.0):
        grads = jax.tree.map(lambda x, c=scale: jnp.asarray(rng.normal(size=x.shape) * c, jnp.float32), params)
        assert float(optax.tree.norm(grads)) > clip  # the clip is active
        u, s_ours = ours.update(grads, s_ours, p_ours)
        p_ours = optax.apply_updates(p_ours, u)
        u, s_theirs = theirs.update(grads, s_theirs, p_theirs)
        p_theirs = optax.apply_updates(p_theirs, u)
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(p_ours)))
    for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(p_theirs)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_changing_the_lr_does_not_recompile_the_step(setup):
    """lr is a traced input: a new lr every GRPO step reuses one executable, and it is used."""
    model, binder, _, step_cfg = setup
    steps = make_steps(binder, step_cfg)
    params = params_of(model)
    batch = to_micro(with_logps(grpo_batch(seed=4), steps.logps, params, params), 4)
    counts, outs = [], []
    for lr in (1e-2, 3e-3):
        h = dict(HYPER, lr=np.float32(lr))
        out, _, _ = steps.grpo(copy(params), steps.init(params, h), batch, h)
        outs.append(out)
        counts.append(steps.compile_count())
    assert counts == [2, 2]  # one logps and one grpo executable for both lrs
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])))


@pytest.mark.parametrize("scale", [1e-3, 1e3])  # the mean gradient's norm below / above the clip
def test_apply_equals_optax_clip_then_adamw(scale):
    """`_apply` folds the global-norm clip into one scalar (its temp memory: 1.29x the params, not
    2.00x): the same numbers as optax's clip_by_global_norm -> adamw chain on Σg / count."""
    rng = np.random.default_rng(0)
    params = {"a": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
              "b": {"c": jnp.asarray(rng.normal(size=7), jnp.float32)}}
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) * scale, jnp.float32), params)
    count = jnp.float32(3.0)
    tx = optax.chain(optax.clip_by_global_norm(HYPER["grad_clip"]),
                     optax.adamw(HYPER["lr"], b1=0.9, b2=0.999, weight_decay=HYPER["weight_decay"]))
    state = tx.init(params)
    mean = jax.tree.map(lambda g: g / count, grads)
    want_updates, want_state = tx.update(mean, state, params)
    want = optax.apply_updates(params, want_updates)
    got, got_state, norm = steps_module._apply(params, state, grads, count, HYPER)
    np.testing.assert_allclose(float(norm), float(optax.tree.norm(mean)), rtol=1e-6)
    assert (float(norm) > HYPER["grad_clip"]) == (scale > 1)
    for x, y in zip(jax.tree.leaves((got, got_state)), jax.tree.leaves((want, want_state))):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
