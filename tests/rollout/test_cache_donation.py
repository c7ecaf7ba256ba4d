"""decode and append update the KV cache in place: their compiled programs alias at least the
cache's bytes (per device) from the donated state to the new one, on one device and on a mesh
where the cache is sharded. Without that, each call holds two caches."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from searche1_jax.model.config import get_preset
from searche1_jax.model.create import create_model, flat_params, model_from_arrays
from searche1_jax.model.sharding import make_mesh
from searche1_jax.model.speed import SpeedPolicy
from searche1_jax.rollout.sampler import SamplingParams, append, decode, empty_state

CFG = get_preset("tiny")
B, S = 8, 64


def per_device_bytes(tree) -> int:
    """Bytes of device 0's shards of every array of `tree`."""
    dev = jax.devices()[0]
    return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards if s.device == dev)


@pytest.fixture(scope="module", params=["one_device", "mesh"])
def model(request):
    m = create_model(CFG, seed=0)
    if request.param == "one_device":
        return m
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    return model_from_arrays(CFG, {k: np.asarray(v) for k, v in flat_params(m).items()}, mesh=mesh)


def state_of(model):
    return empty_state(model.init_cache(B, S), CFG.vocab_size)


@pytest.mark.parametrize("window", [None, 32])
def test_append_aliases_the_whole_cache(model, window):
    st = state_of(model)
    g, w = nnx.split(model)
    compiled = append.jitted.lower(g, w, st, jnp.zeros((B, 8), jnp.int32), jnp.full((B,), 8, jnp.int32),
                                   jnp.zeros((B,), jnp.int32), window=window).compile()
    assert compiled.memory_analysis().alias_size_in_bytes >= per_device_bytes(st.cache)


@pytest.mark.parametrize("window", [None, 32])
def test_decode_aliases_the_whole_cache(model, window):
    st = state_of(model)
    g, w = nnx.split(model)
    compiled = decode.jitted.lower(
        g, w, st, jnp.ones((B,), bool), jax.random.key(0), stop_table=jnp.zeros((1, CFG.vocab_size), jnp.int32),
        stop_rank=jnp.array([[1]], jnp.int32), stop_enabled=jnp.ones((B, 1), bool),
        eos_ids=jnp.array([-1], jnp.int32), max_new=4, params=SamplingParams(greedy=True),
        speed=SpeedPolicy(), window=window).compile()
    assert compiled.memory_analysis().alias_size_in_bytes >= per_device_bytes(st.cache)
