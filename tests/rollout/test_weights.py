"""The weights rollouts decode from (config.rollout.weights, issue 21 item 4).

"replica": a copy in the compute dtype, whole on every device of data x fsdp and split over
tensor as the rules say, made once a step. Oracles: numpy's cast of the training params (the
copy's values), the rules table with `embed` unsharded (its layout), the training params' own
greedy tokens (the copy decodes the same), and XLA's compiled decode on 8 fake devices (no
all-gather inside the decode loop, where the training layout has them)."""
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from searche1_jax.model.config import get_preset
from searche1_jax.model.create import create_model, flat_params
from searche1_jax.model.sharding import DEFAULT_RULES, make_mesh
from searche1_jax.rollout.weights import decode_rules, rollout_model
from searche1_jax.train.state import Binder, params_of
from tests.train.test_step_collectives import COLLECTIVE, computations, in_loops

CFG = get_preset("tiny").replace(dtype="bfloat16")   # fp32 params, bf16 compute: an accelerator's setting
GATHER = re.compile(r"\sall-gather(-start)?\(")


def test_no_copy_where_it_would_change_nothing():
    model = create_model(get_preset("tiny"))   # one device, fp32 params and compute
    assert rollout_model(params_of(model), model.cfg, None, DEFAULT_RULES) is None


def test_one_device_copy_is_the_bf16_cast():
    model = create_model(CFG)
    replica = rollout_model(params_of(model), CFG, None, DEFAULT_RULES)
    want, got = flat_params(model), flat_params(replica)
    assert set(got) == set(want)
    for k, w in want.items():
        assert got[k].dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(w).astype(ml_dtypes.bfloat16))


def test_each_step_copy_holds_that_steps_params():
    """The abstract model is made once and reused: a second step's copy must hold the second
    step's values, and the first copy keeps its own (nothing shared between steps)."""
    model = create_model(CFG)
    params = params_of(model)
    first = rollout_model(params, CFG, None, DEFAULT_RULES)
    doubled = jax.tree.map(lambda a: a * 2, params)
    second = rollout_model(doubled, CFG, None, DEFAULT_RULES)
    want = flat_params(model)
    got1, got2 = flat_params(first), flat_params(second)
    for k, w in want.items():
        w = np.asarray(w)
        np.testing.assert_array_equal(np.asarray(got1[k]), w.astype(ml_dtypes.bfloat16))
        np.testing.assert_array_equal(np.asarray(got2[k]), (w * 2).astype(ml_dtypes.bfloat16))


@pytest.mark.parametrize("shape", [{"fsdp": 8}, {"fsdp": 4, "tensor": 2}])
def test_replica_is_whole_over_fsdp_and_split_over_tensor(shape):
    mesh = make_mesh(shape)
    model = create_model(CFG, mesh=mesh)
    replica = rollout_model(params_of(model), CFG, mesh, DEFAULT_RULES)
    train, copy = flat_params(model), flat_params(replica)
    for k, w in train.items():
        spec = copy[k].sharding.spec
        assert "fsdp" not in jax.tree.leaves(tuple(spec)), (k, spec)
        # the training layout with its fsdp entries dropped: tensor stays where it was
        want = P(*[None if e == "fsdp" else (tuple(a for a in e if a != "fsdp") or None)
                   if isinstance(e, tuple) else e for e in w.sharding.spec])
        assert tuple(e for e in spec) == tuple(e for e in want)[:len(spec)], (k, spec, want)
        assert all(e is None for e in tuple(want)[len(spec):])
        np.testing.assert_array_equal(np.asarray(copy[k]), np.asarray(w).astype(ml_dtypes.bfloat16))
    assert copy["layers.0.attn.q_proj.kernel"].sharding.spec != P() or shape.get("tensor", 1) == 1


def test_decode_rules_only_unshard_the_weights_fsdp_axis():
    rules = dict(decode_rules(DEFAULT_RULES))
    assert rules["embed"] is None
    assert {k: v for k, v in rules.items() if k != "embed"} == {k: v for k, v in DEFAULT_RULES if k != "embed"}


def greedy_tokens(model, prompt: np.ndarray, steps: int) -> np.ndarray:
    """Greedy continuation by full forwards (no cache): the reference decoding. Each forward
    runs over the final width, one jitted program: attention is causal, so the zeros after
    position p do not change position p's logits."""
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, t: jnp.argmax(nnx.merge(graphdef, s)(t), axis=-1).astype(jnp.int32))
    b, p = prompt.shape
    toks = np.zeros((b, p + steps), np.int32)
    toks[:, :p] = prompt
    for i in range(steps):
        toks[:, p + i] = np.asarray(forward(state, toks))[:, p + i - 1]
    return toks[:, p:]


def assert_decodes_like(replica, model, prompt: np.ndarray, steps: int = 6):
    """The replica's greedy tokens are the model's, and so are its logits on the continuation.
    The logits carry the check: a random tiny model's greedy tokens mostly repeat its input
    token (the tied embedding dominates), so another model's weights can give the same tokens;
    its logits then differ by ~0.95 (max), where the replica's are within 0.003 of the model's
    (bf16 compute on both sides; unrolled vs scanned layers sum in another order)."""
    tokens = greedy_tokens(model, prompt, steps)
    np.testing.assert_array_equal(greedy_tokens(replica, prompt, steps), tokens)
    seq = jnp.asarray(np.concatenate([prompt, tokens], axis=1))
    np.testing.assert_allclose(np.asarray(replica(seq), np.float32), np.asarray(model(seq), np.float32), atol=0.02)


def test_the_replica_decodes_the_training_params_tokens():
    mesh = make_mesh({"fsdp": 8})
    model = create_model(CFG, mesh=mesh, seed=3)
    replica = rollout_model(params_of(model), CFG, mesh, DEFAULT_RULES)
    prompt = np.random.default_rng(0).integers(0, CFG.vocab_size, (8, 12), dtype=np.int32)
    assert_decodes_like(replica, model, prompt)


@pytest.mark.parametrize("mesh_shape", [None, {"fsdp": 8}])
def test_a_scanned_model_decodes_from_an_unrolled_replica_with_its_own_tokens(mesh_shape):
    """scan_layers trains with the layers stacked; the replica unrolls them (a decode slices no
    stack): layer i of the copy is numpy's slice i of the stack, cast, and greedy decoding from
    it gives the scanned training model's own tokens."""
    from searche1_jax.model.create import unstack_layers
    cfg = CFG.replace(scan_layers=True)
    mesh = make_mesh(mesh_shape) if mesh_shape else None
    model = create_model(cfg, mesh=mesh, seed=5)
    replica = rollout_model(params_of(model), cfg, mesh, DEFAULT_RULES)
    assert not replica.cfg.scan_layers and replica.cfg.param_dtype == "bfloat16"
    want = unstack_layers({k: np.asarray(v) for k, v in flat_params(model).items()}, cfg)
    got = flat_params(replica)
    assert set(got) == set(want) and any(k.startswith("layers.1.") for k in got)
    for k, w in want.items():
        np.testing.assert_array_equal(np.asarray(got[k]), w.astype(ml_dtypes.bfloat16), err_msg=k)
    prompt = np.random.default_rng(1).integers(0, cfg.vocab_size, (8, 12), dtype=np.int32)
    assert_decodes_like(replica, model, prompt)


def weight_gathers(weights: str) -> tuple[int, int]:
    """(all-gathers of a weight-shaped array anywhere in the compiled decode, collectives of
    any kind inside its token loop) for the tiny config on fsdp 8 (plan --aot's decode program, with
    config.rollout.weights = `weights`)."""
    from searche1_jax import aot
    from searche1_jax.model.create import abstract_model
    from searche1_jax.program_plan import program_shapes
    from tests.test_aot import MESH, tiny_config
    c, model, run = tiny_config(rollout__weights=weights, rollout__engine="padded")
    s = program_shapes(c, run, MESH)
    hlo = aot.Programs(c, model, MESH, s).lower("decode").compile().as_text()
    comps = computations(hlo)
    # a weight is gathered in its flattened 2-D form ([64, 2, 16] as [64, 32]): match by size
    sizes = {v.get_value().size for k, v in abstract_model(model)[2].items() if k.endswith(("kernel", "embed"))}
    result = re.compile(r"=\s*f32\[([\d,]+)\]")

    def weight_sized(line: str) -> bool:
        m = result.search(line)
        return bool(m) and int(np.prod([int(x) for x in m.group(1).split(",")])) in sizes

    gathers = [line for lines in comps.values() for line in lines if GATHER.search(line)]
    in_loop = [line for name in in_loops(comps) for line in comps.get(name, []) if COLLECTIVE.search(line)]
    weight_in_loop = [line for line in in_loop if GATHER.search(line) and weight_sized(line)]
    assert not weight_in_loop, weight_in_loop   # XLA hoists a loop-invariant gather: never per token
    return sum(map(weight_sized, gathers)), len(in_loop)


def test_the_replica_gathers_no_weight_where_the_training_layout_gathers_them_all():
    # The training layout (FSDP over 8 devices): the decode call all-gathers every weight matrix
    # (XLA hoists the gathers out of the token loop, so each call holds the whole fp32 model on
    # every device, and each call of a rollout gathers it again): the test can fail. The replica
    # is whole on every device: no weight moves.
    n_train, _ = weight_gathers("train")
    n_replica, in_loop = weight_gathers("replica")
    assert n_train == 7 * get_preset("tiny").n_layers + 1   # q, k, v, o, gate, up, down a layer; the head
    assert n_replica == 0
    # and the token loop communicates nothing at all: each device decodes its own rows (the
    # cache and token writes are scatters batched over the rows, not indexed by a row iota,
    # which made XLA all-gather every row's new keys, values and tokens at every step)
    assert in_loop == 0


def test_sampling_moves_no_vocabulary_sized_array_inside_the_decode_loop():
    # top-p put its sorted mask back with a scatter: over rows sharded on the mesh, XLA
    # all-gathered the [B, V] indices and mask at every step (at Qwen2.5-3B's 640-row chunk on
    # 8 devices, s32[640, 151936, 2] + pred[640, 151936] a token: 0.9 GB)
    from searche1_jax import aot
    from searche1_jax.program_plan import program_shapes
    from tests.test_aot import MESH, tiny_config
    c, model, run = tiny_config(rollout__engine="padded", rollout__top_p=0.9)
    s = program_shapes(c, run, MESH)
    assert model.vocab_size not in (s.cache_len, s.rollout_rows, s.max_new)   # the match below is the vocabulary
    comps = computations(aot.Programs(c, model, MESH, s).lower("decode").compile().as_text())
    vocab = re.compile(rf"=\s*\w+\[(?:[\d,]*,)?{model.vocab_size}(?:,[\d,]*)?\]")
    bad = [line.strip()[:120] for name in in_loops(comps) for line in comps.get(name, [])
           if GATHER.search(line) and vocab.search(line)]
    assert not bad, bad


def test_binder_of_the_training_model_is_unchanged_by_a_copy():
    mesh = make_mesh({"fsdp": 8})
    model = create_model(CFG, mesh=mesh)
    params = params_of(model)
    before = {k: np.asarray(v) for k, v in flat_params(model).items()}
    rollout_model(params, CFG, mesh, DEFAULT_RULES)
    after = flat_params(Binder(model).bind(params))
    for k, v in before.items():
        np.testing.assert_array_equal(np.asarray(after[k]), v)
        assert after[k].dtype == jnp.float32
