"""The KV cache is created sharded on the model's mesh (rows over data x fsdp, KV heads over tensor
where they divide, whole heads otherwise), and a sharded cached forward equals the single-device
one and keeps that layout."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from searche1_jax.model.config import get_preset
from searche1_jax.model.create import create_model, flat_params, model_from_arrays
from searche1_jax.model.kv_cache import init_cache
from searche1_jax.model.sharding import make_mesh, trimmed

CFG = get_preset("tiny")   # 2 KV heads of 16, 2 layers


@pytest.mark.parametrize("mesh_shape,k_spec,shard_shape", [
    ({"data": 2, "fsdp": 2, "tensor": 2}, P(("data", "fsdp"), "tensor", None, None), (2, 1, 16, 32)),
    # tensor 4 > 2 KV heads: each device holds both heads whole, rows over fsdp
    ({"fsdp": 2, "tensor": 4}, P("fsdp", None, None, None), (4, 2, 16, 32)),
])
def test_cache_is_created_sharded_by_rows_and_kv_heads(mesh_shape, k_spec, shard_shape):
    mesh = make_mesh(mesh_shape)
    cache = init_cache(CFG, 8, 32, mesh=mesh)
    for k, v in zip(cache.k, cache.v):
        assert k.sharding.spec == trimmed(k_spec)  # as jit returns it (sharding.trimmed)
        assert v.sharding.spec == trimmed(P(k_spec[0], k_spec[1], None, None))
        # every device holds its share only (rows / groups x heads / groups), no device the whole
        assert {s.data.shape for s in k.addressable_shards} == {shard_shape}
        assert {s.data.shape for s in v.addressable_shards} == {shard_shape[:2] + shard_shape[:1:-1]}
        assert not np.asarray(k).any() and not np.asarray(v).any()
    assert cache.length.sharding.spec == P(k_spec[0])
    assert cache.max_len == 32


def test_sharded_extend_equals_single_device_and_keeps_the_cache_layout():
    model = create_model(CFG, seed=4)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = model_from_arrays(CFG, {k: np.asarray(v) for k, v in flat_params(model).items()}, mesh=mesh)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, CFG.vocab_size, (8, 6)), jnp.int32)
    n_valid = jnp.asarray([6, 3, 1, 6, 0, 2, 5, 4], jnp.int32)
    step = jax.jit(lambda m, t, n, c: m.extend(t, n, c))
    ref, ref_cache = step(model, tokens, n_valid, init_cache(CFG, 8, 16))
    cache = sharded.init_cache(8, 16)
    out, new_cache = step(sharded, tokens, n_valid, cache)
    np.testing.assert_allclose(np.asarray(out)[np.asarray(n_valid) > 0],
                               np.asarray(ref)[np.asarray(n_valid) > 0], atol=1e-5)
    for a, b, c in zip(new_cache.k + new_cache.v, ref_cache.k + ref_cache.v, cache.k + cache.v):
        assert a.sharding.is_equivalent_to(c.sharding, a.ndim), (a.sharding, c.sharding)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    assert list(np.asarray(new_cache.length)) == list(np.asarray(n_valid))
