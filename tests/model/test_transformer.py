"""Decoder parity with transformers (tiny random Qwen2 / Llama), cached extend, sharding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from searche1_jax.model.checkpoint import load_hf
from searche1_jax.model.create import flat_params, model_from_arrays
from searche1_jax.model.sharding import make_mesh
from searche1_jax.model.transformer import init_cache

from tests.model.hf_tiny import hf_logits, make_tiny_hf


def padded_batch(vocab, lengths, total, *, left, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, size=(len(lengths), total))
    valid = np.zeros((len(lengths), total), bool)
    for i, n in enumerate(lengths):
        if left:
            valid[i, total - n:] = True
        else:
            valid[i, :n] = True
    return tokens, valid


@pytest.fixture(scope="module", params=[("qwen2", False), ("llama", True)], ids=["qwen2-untied", "llama-tied"])
def tiny(request, tmp_path_factory):
    family, tied = request.param
    directory = str(tmp_path_factory.mktemp(family))
    hf = make_tiny_hf(family, directory, tied=tied)
    model, cfg = load_hf(directory)
    return hf, model, cfg, directory


@pytest.mark.parametrize("left", [True, False], ids=["left-pad", "right-pad"])
def test_logits_match_transformers_on_padded_batch(tiny, left):
    hf, model, cfg, _ = tiny
    tokens, valid = padded_batch(cfg.vocab_size, [16, 9, 3], 16, left=left)
    ref = hf_logits(hf, tokens, valid)
    ours = np.asarray(model(jnp.asarray(tokens), jnp.asarray(valid)))
    assert np.abs(ours - ref)[valid].max() <= 1e-4


@pytest.mark.parametrize("left", [True, False], ids=["left-pad", "right-pad"])
def test_blocked_causal_attention_matches_transformers(tiny, left):
    """Query blocks that skip future keys (attn_block 4, 5, 7: dividing T=19 or not) give HF's
    logits, and the same gradient as one dense square."""
    hf, _, _, directory = tiny
    tokens, valid = padded_batch(384, [19, 12, 5], 19, left=left, seed=3)
    ref = hf_logits(hf, tokens, valid)
    dense, _ = load_hf(directory, attn_block=0)
    for block in (4, 5, 7):
        model, _ = load_hf(directory, attn_block=block)
        ours = np.asarray(model(jnp.asarray(tokens), jnp.asarray(valid)))
        assert np.abs(ours - ref)[valid].max() <= 1e-4, block

    def loss(m):
        logits = m(jnp.asarray(tokens), jnp.asarray(valid))
        return jnp.sum(jnp.where(jnp.asarray(valid)[..., None], jax.nn.log_softmax(logits), 0.0)[..., 7])

    from flax import nnx
    g_dense = nnx.state(nnx.grad(loss)(dense), nnx.Param)
    g_block = nnx.state(nnx.grad(loss)(model), nnx.Param)
    for a, b in zip(jax.tree.leaves(g_dense), jax.tree.leaves(g_block)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=1e-4)


def test_hidden_states_times_head_equal_logits(tiny):
    _, model, cfg, _ = tiny
    tokens, valid = padded_batch(cfg.vocab_size, [8, 5], 8, left=False)
    hidden = model(jnp.asarray(tokens), jnp.asarray(valid), return_hidden=True)
    assert hidden.shape == (2, 8, cfg.d_model)
    np.testing.assert_allclose(np.asarray(hidden) @ np.asarray(model.head()),
                               np.asarray(model(jnp.asarray(tokens), jnp.asarray(valid))), atol=1e-5)


@pytest.mark.parametrize("few_rows", [False, True], ids=["stored_kernels", "few_row_view"])
def test_cached_extend_matches_full_forward(tiny, few_rows):
    """Prefill rows of different lengths, decode one token at a time with rows at different
    positions, and extend one row by a 37-token chunk mid-way (an observation). With
    few_rows=True every call runs `few_row_view()` (kernels and head stored [out, in])."""
    _, model, cfg, _ = tiny
    rng = np.random.default_rng(1)
    prompt_lens = np.array([11, 4, 7])
    total = 80
    seqs = [list(rng.integers(0, cfg.vocab_size, size=n)) for n in prompt_lens]
    cache = init_cache(cfg, 3, total)
    step = jax.jit(lambda m, t, n, c: (m.few_row_view() if few_rows else m).extend(t, n, c))

    prompt = np.zeros((3, prompt_lens.max()), np.int32)
    for i, s in enumerate(seqs):
        prompt[i, :len(s)] = s
    last, cache = step(model, jnp.asarray(prompt), jnp.asarray(prompt_lens), cache)
    # got[i]: (index of the row's last appended token, logits the cached call returned there)
    got = {i: [(len(seqs[i]) - 1, np.asarray(last[i]))] for i in range(3)}
    for t in range(6):
        tok = rng.integers(0, cfg.vocab_size, size=3)
        n = np.array([1, 1, 1]) if t != 2 else np.array([1, 0, 1])  # row 1 idles once
        for i in range(3):
            if n[i]:
                seqs[i].append(int(tok[i]))
        last, cache = step(model, jnp.asarray(tok[:, None]), jnp.asarray(n), cache)
        for i in range(3):
            if n[i]:
                got[i].append((len(seqs[i]) - 1, np.asarray(last[i])))
        if t == 3:  # row 2 gets a 37-token passage, the others nothing
            chunk = rng.integers(0, cfg.vocab_size, size=(3, 37))
            seqs[2].extend(int(x) for x in chunk[2])
            last, cache = step(model, jnp.asarray(chunk), jnp.asarray([0, 0, 37]), cache)
            got[2].append((len(seqs[2]) - 1, np.asarray(last[2])))
    assert list(np.asarray(cache.length)) == [len(s) for s in seqs]
    for i, s in enumerate(seqs):
        full = np.asarray(model(jnp.asarray([s])))[0]
        assert len(got[i]) >= 6
        for pos, logits in got[i]:
            assert np.abs(logits - full[pos]).max() <= 1e-4, (i, pos)


def test_extend_all_logits_cover_every_position(tiny):
    _, model, cfg, _ = tiny
    rng = np.random.default_rng(2)
    seq = rng.integers(0, cfg.vocab_size, size=(2, 20))
    cache = init_cache(cfg, 2, 32)
    a, cache = model.extend(jnp.asarray(seq[:, :12]), jnp.asarray([12, 12]), cache, output="all")
    b, cache = model.extend(jnp.asarray(seq[:, 12:]), jnp.asarray([8, 8]), cache, output="all")
    full = np.asarray(model(jnp.asarray(seq)))
    assert np.abs(np.concatenate([a, b], axis=1) - full).max() <= 1e-4


def test_sharded_forward_equals_single_device(tiny):
    _, model, cfg, _ = tiny
    assert len(jax.devices()) == 8, "conftest sets 8 fake CPU devices"
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    arrays = {k: np.asarray(v) for k, v in flat_params(model).items()}
    sharded = model_from_arrays(cfg, arrays, mesh=mesh)
    specs = {k: v.sharding.spec for k, v in flat_params(sharded).items()}
    assert any("tensor" in str(s) for s in specs.values()) and any("fsdp" in str(s) for s in specs.values())
    tokens, valid = padded_batch(cfg.vocab_size, [16, 12, 9, 4], 16, left=True)
    ref = np.asarray(model(jnp.asarray(tokens), jnp.asarray(valid)))
    out = jax.jit(lambda m, t, v: m(t, v))(sharded, jnp.asarray(tokens), jnp.asarray(valid))
    assert np.abs(np.asarray(out) - ref).max() <= 1e-5


def test_remat_and_bf16_forward_run(tiny):
    _, model, cfg, directory = tiny
    m16, cfg16 = load_hf(directory, dtype="bfloat16", param_dtype="bfloat16", remat=True)
    tokens, valid = padded_batch(cfg.vocab_size, [10, 6], 10, left=False)
    ref = np.asarray(model(jnp.asarray(tokens), jnp.asarray(valid)))
    out = np.asarray(m16(jnp.asarray(tokens), jnp.asarray(valid)))
    assert out.dtype == np.float32  # logits always f32
    # bf16 is an approximation: the argmax mostly agrees, errors are bounded
    assert np.abs(out - ref)[valid].max() < 0.25
    loss = lambda m: m(jnp.asarray(tokens), jnp.asarray(valid)).mean()  # noqa: E731
    from flax import nnx
    grads = nnx.grad(loss)(m16)
    assert all(np.isfinite(np.asarray(g, np.float32)).all() for g in jax.tree.leaves(grads))


def test_remat_gradients_equal_plain_and_remat_saves_memory_on_this_backend(tiny):
    """Remat recomputes each block in the backward pass: the same gradients (fp32, to 1e-5), and
    the compiled backward keeps one block's activations instead of all of them. The memory check
    pins the XLA:CPU case (barriers dropped there; `_ordered_remat`): with nnx.remat the temp was
    ~0.94x the plain one at the warm-start shape."""
    from flax import nnx
    _, model, cfg, directory = tiny
    plain, _ = load_hf(directory, remat=False)
    remat, _ = load_hf(directory, remat=True)
    tokens, valid = padded_batch(cfg.vocab_size, [16, 11, 5], 16, left=False)
    tokens, valid = jnp.asarray(tokens), jnp.asarray(valid)

    def grads(m):
        return nnx.grad(lambda m: (m(tokens, valid, return_hidden=True) ** 2).mean())(m)

    for a, b in zip(jax.tree.leaves(grads(plain)), jax.tree.leaves(grads(remat))):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)

    # activations dominate: many layers, long rows, wide MLP, small vocab and weights
    import dataclasses
    big = dataclasses.replace(cfg, n_layers=8, mlp_dim=1024, vocab_size=64)
    from searche1_jax.model.create import create_model

    def temp(remat_on):
        m = create_model(dataclasses.replace(big, remat=remat_on), seed=0)
        graphdef, state = nnx.split(m)
        toks = jnp.zeros((8, 256), jnp.int32)

        def loss(state):
            return (nnx.merge(graphdef, state)(toks, return_hidden=True) ** 2).mean()
        compiled = jax.jit(jax.grad(loss)).lower(state).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    plain_b, remat_b = temp(False), temp(True)
    assert remat_b < 0.5 * plain_b, (plain_b, remat_b)


def numpy_cached_attention(q, k, v, mask):
    """GQA over a cache, by hand: q [B,T,H,D], k [B,K,D,S], v [B,K,S,D], mask [B,T,S]."""
    b, t, h, d = q.shape
    group = h // k.shape[1]
    out = np.zeros_like(q)
    for i in range(b):
        for j in range(h):
            kv = j // group
            s = q[i, :, j] @ k[i, kv] / np.sqrt(d)                 # [T, S]
            s = np.where(mask[i], s, -1e30)
            p = np.exp(s - s.max(-1, keepdims=True))
            out[i, :, j] = (p / p.sum(-1, keepdims=True)) @ v[i, kv]
    return out


@pytest.mark.parametrize("block", [0, 8, 16, 37, 64])
def test_appends_over_the_cache_in_query_blocks_equal_the_formula(block):
    from searche1_jax.model.transformer import attend_cached
    r = np.random.default_rng(0)
    b, t, h, kv, d, s = 3, 37, 4, 2, 8, 50     # 37 queries: blocks of 8 and 16 leave a ragged last one
    q = r.normal(size=(b, t, h, d)).astype(np.float32)
    k = r.normal(size=(b, kv, d, s)).astype(np.float32)
    v = r.normal(size=(b, kv, s, d)).astype(np.float32)
    mask = r.random((b, t, s)) < 0.7
    mask[:, :, 0] = True                        # every query sees a slot, as every append does
    got = attend_cached(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask), block)
    np.testing.assert_allclose(np.asarray(got), numpy_cached_attention(q, k, v, mask), atol=1e-5, rtol=1e-5)
