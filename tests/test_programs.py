"""programs.LeanJit: with set_lean(True), one ahead-of-time executable per argument signature,
the jit's own trace / lowering caches emptied, the same numbers and donation as the jit."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from searche1_jax.programs import LeanJit, lean, set_lean


@pytest.fixture
def lean_on():
    set_lean(True)
    yield
    set_lean(False)


def make():
    def f(n, x, y, *, scale, offset):
        return (x * n + y * scale + offset).sum(), x + 1.0
    jitted = jax.jit(f, static_argnums=(0,), static_argnames=("scale",), donate_argnums=(1,))
    return LeanJit(jitted, static_argnums=(0,), static_argnames=("scale",)), f


def test_lean_calls_equal_the_function_and_compile_once_per_signature(lean_on):
    lj, f = make()
    x, y = np.arange(6, dtype=np.float32), np.ones(6, np.float32)
    want = f(3, x, y, scale=2.0, offset=0.5)  # numpy oracle: the plain function
    got = lj(3, jnp.asarray(x), jnp.asarray(y), scale=2.0, offset=0.5)
    np.testing.assert_allclose(np.asarray(got[0]), want[0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(got[1]), want[1])
    assert lj._cache_size() == 1 and lj.jitted._cache_size() == 0  # executable kept, jit caches emptied
    lj(3, jnp.asarray(x), jnp.asarray(y), scale=2.0, offset=1.5)   # same signature: no new program
    assert lj._cache_size() == 1
    lj(4, jnp.asarray(x), jnp.asarray(y), scale=2.0, offset=1.5)   # a new static value
    lj(3, jnp.asarray(x[:4]), jnp.asarray(y[:4]), scale=2.0, offset=1.5)  # a new shape
    lj(3, jnp.asarray(x), jnp.asarray(y), scale=3.0, offset=1.5)   # a new static keyword
    lj(3, jnp.asarray(x), jnp.asarray(y), scale=2.0, offset=jnp.float32(1.5))  # not weak-typed now
    assert lj._cache_size() == 5
    lj.clear_cache()
    assert lj._cache_size() == 0


def test_lean_calls_donate_as_the_jit_does(lean_on):
    lj, _ = make()
    x = jnp.arange(6, dtype=jnp.float32)
    lj(2, x, jnp.ones(6), scale=1.0, offset=0.0)
    assert x.is_deleted()


def test_off_by_default_it_is_the_jit():
    assert not lean()
    lj, f = make()
    x = np.arange(6, dtype=np.float32)
    got = lj(3, jnp.asarray(x), jnp.ones(6), scale=2.0, offset=0.5)
    np.testing.assert_allclose(np.asarray(got[0]), f(3, x, np.ones(6), scale=2.0, offset=0.5)[0], rtol=1e-6)
    assert lj.jitted._cache_size() == 1 and lj._cache_size() == 1
