"""Decoder-only transformer (Qwen2 / Qwen2.5 / Llama) in Flax NNX.

One block: x + Attn(RMSNorm(x)) then + SwiGLU(RMSNorm(.)). Grouped-query attention with RoPE
(rotate-half layout, as HF). Softmax, RoPE and RMSNorm run in fp32 whatever the compute dtype.
Every parameter carries `logical_axes` metadata that `sharding.py` maps to the mesh.

Two entry points:
- `__call__(tokens, valid)`: training forward over full sequences (any padding, left or right),
  returning logits or final hidden states (losses fuse the LM head themselves).
- `extend(tokens, n_valid, cache)`: cached forward where every row appends its first
  `n_valid[b]` tokens at its own write position; the same call does prefill, one-token decode
  and appending a retrieved passage to some rows only.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from searche1_jax.model.config import ModelConfig
from searche1_jax.model.sharding import constrain

_NEG = -1e30  # finite "minus infinity": a fully masked row stays NaN-free


def _param(rngs: nnx.Rngs, init, shape, dtype, axes) -> nnx.Param:
    return nnx.Param(init(rngs.params(), shape, jnp.dtype(dtype)), logical_axes=axes)


class Linear(nnx.Module):
    """y = x @ kernel (+ bias); kernel [in, out] (HF stores [out, in])."""

    def __init__(self, d_in, d_out, axes, *, bias: bool, cfg: ModelConfig, rngs: nnx.Rngs):
        self.kernel = _param(rngs, nnx.initializers.normal(0.02), (d_in, d_out), cfg.param_dtype, axes)
        self.bias = (_param(rngs, nnx.initializers.zeros, (d_out,), cfg.param_dtype, axes[1:])
                     if bias else None)
        self.dtype = jnp.dtype(cfg.dtype)

    def __call__(self, x, kernel_t=None):
        """kernel_t: optional copy of the kernel stored [out, in] (`Transformer.decode_kernels`)."""
        # A 2-D [tokens, in] operand: XLA:CPU runs the backward's weight-gradient dot
        # (contracting the token axis) ~15% faster than over [B, T, in].
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1]).astype(self.dtype)
        if kernel_t is None:
            y = x2 @ self.kernel[...].astype(self.dtype)
        else:
            y = _small_m_dot(x2, kernel_t.astype(self.dtype))
        y = y.reshape(lead + (y.shape[-1],))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


def _small_m_dot(x, w_t, preferred_element_type=None):
    """x [M, in] @ w_t[out, in]^T for a handful of tokens M (decode).

    XLA:CPU runs a few-row dot about twice as fast with the weight as the row-major left
    operand and the output [out, M]; the barrier keeps the small transpose back to [M, out]
    from being folded into the dot, which would bring back the slow form.
    """
    y_t = jnp.einsum("oi,mi->om", w_t, x, preferred_element_type=preferred_element_type)
    return jax.lax.optimization_barrier(y_t).T


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, cfg: ModelConfig, rngs: nnx.Rngs):
        self.scale = _param(rngs, nnx.initializers.ones, (dim,), cfg.param_dtype, ("norm",))
        self.eps = cfg.rms_eps
        self.dtype = jnp.dtype(cfg.dtype)

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        # HF casts back to the input dtype before the weight multiply.
        return (x32.astype(x.dtype) * self.scale[...].astype(x.dtype)).astype(self.dtype)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding, rotate-half layout. x: [B, T, H, D]; positions: [B, T] int."""
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq          # [B, T, D/2]
    cos = jnp.concatenate([jnp.cos(angles)] * 2, axis=-1)[:, :, None, :]
    sin = jnp.concatenate([jnp.sin(angles)] * 2, axis=-1)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., : d // 2], x32[..., d // 2:]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


def attend(q, k, v, mask, *, cached: bool = False):
    """Grouped-query attention -> [B,T,H,D]. q [B,T,H,D]; mask [B,T,S] bool.

    k, v: [B,S,K,D] (a chunk's own keys/values), or with cached=True the KV cache layout
    (`KVCache`): k [B,K,D,S], v [B,K,S,D], which are already the dot operands' layouts.
    Layouts are chosen for XLA's dot emitter: scores come out [B,K,T,G,S] and the PV product
    [B,K,T,G,D] (the batch dims first, then the free dims in operand order), and only the small
    [.., D] output is transposed back. Asking the PV dot for [B,T,K,G,D] directly made XLA:CPU
    run it 4x slower; a [B,S,K,D] cache was transposed whole at every decode step.
    """
    b, t, h, d = q.shape
    kv = k.shape[1] if cached else k.shape[2]
    q = q.reshape(b, t, kv, h // kv, d)
    k_spec, v_spec = ("bkds", "bksd") if cached else ("bskd", "bskd")
    scores = jnp.einsum(f"btkgd,{k_spec}->bktgs", q, k, preferred_element_type=jnp.float32)
    scores = scores * (d ** -0.5)
    scores = jnp.where(mask[:, None, :, None, :], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum(f"bktgs,{v_spec}->bktgd", probs, v)
    return out.transpose(0, 2, 1, 3, 4).reshape(b, t, h, d)


def attend_causal(q, k, v, mask, block: int):
    """`attend` for a causal self-attention square (T == S, mask already causal) in query blocks.

    Query block [i0, i1) only looks at keys [0, i1): the keys after i1 are in its future and
    masked anyway, so skipping them changes nothing but the work (about (T + block) / 2T of
    the square's matmul and softmax). Padding of any kind stays in `mask`. block <= 0 or
    >= T: one dense block.
    """
    t = q.shape[1]
    if block <= 0 or t <= block:
        return attend(q, k, v, mask)
    outs = [attend(q[:, i0:i0 + block], k[:, :i0 + block], v[:, :i0 + block],
                   mask[:, i0:i0 + block, :i0 + block])
            for i0 in range(0, t, block)]
    return jnp.concatenate(outs, axis=1)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, h, k, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = Linear(d, h * hd, ("embed", "heads"), bias=cfg.qkv_bias, cfg=cfg, rngs=rngs)
        self.k_proj = Linear(d, k * hd, ("embed", "kv_heads"), bias=cfg.qkv_bias, cfg=cfg, rngs=rngs)
        self.v_proj = Linear(d, k * hd, ("embed", "kv_heads"), bias=cfg.qkv_bias, cfg=cfg, rngs=rngs)
        self.o_proj = Linear(h * hd, d, ("heads", "embed"), bias=False, cfg=cfg, rngs=rngs)
        self.n_heads, self.n_kv_heads, self.head_dim = h, k, hd
        self.theta = cfg.rope_theta

    def qkv(self, x, positions, kt=None):
        b, t, _ = x.shape
        kt = kt or {}
        q = self.q_proj(x, kt.get("q_proj")).reshape(b, t, self.n_heads, self.head_dim)
        k = self.k_proj(x, kt.get("k_proj")).reshape(b, t, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x, kt.get("v_proj")).reshape(b, t, self.n_kv_heads, self.head_dim)
        return rope(q, positions, self.theta), rope(k, positions, self.theta), v

    def out(self, o, kt=None):
        b, t = o.shape[:2]
        return self.o_proj(o.reshape(b, t, self.n_heads * self.head_dim), (kt or {}).get("o_proj"))


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, m = cfg.d_model, cfg.mlp_dim
        self.gate_proj = Linear(d, m, ("embed", "mlp"), bias=False, cfg=cfg, rngs=rngs)
        self.up_proj = Linear(d, m, ("embed", "mlp"), bias=False, cfg=cfg, rngs=rngs)
        self.down_proj = Linear(m, d, ("mlp", "embed"), bias=False, cfg=cfg, rngs=rngs)

    def __call__(self, x, kt=None):
        kt = kt or {}
        h = jax.nn.silu(self.gate_proj(x, kt.get("gate_proj"))) * self.up_proj(x, kt.get("up_proj"))
        return self.down_proj(h, kt.get("down_proj"))


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.input_norm = RMSNorm(cfg.d_model, cfg, rngs)
        self.attn = Attention(cfg, rngs)
        self.post_attn_norm = RMSNorm(cfg.d_model, cfg, rngs)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x, positions, mask, attn_block: int = 0):
        q, k, v = self.attn.qkv(self.input_norm(x), positions)
        x = x + self.attn.out(attend_causal(q, k, v, mask, attn_block))
        return x + self.mlp(self.post_attn_norm(x))

    def extend(self, x, positions, mask, k_cache, v_cache, write_idx, kt=None):
        """Append this chunk's keys/values at `write_idx` [B, T] (out of range = dropped).

        kt: this block's `decode_kernels` entry, or None."""
        q, k, v = self.attn.qkv(self.input_norm(x), positions, kt)
        rows = jnp.arange(x.shape[0])[:, None]
        # k_cache [B,K,D,S], v_cache [B,K,S,D]: the indexed (slot) results are [B,T,K,D] = k, v
        k_cache = k_cache.at[rows, :, :, write_idx].set(k.astype(k_cache.dtype), mode="drop")
        v_cache = v_cache.at[rows, :, write_idx].set(v.astype(v_cache.dtype), mode="drop")
        x = x + self.attn.out(attend(q, k_cache.astype(q.dtype), v_cache.astype(q.dtype), mask,
                                     cached=True), kt)
        return x + self.mlp(self.post_attn_norm(x), kt), k_cache, v_cache


class KVCache(NamedTuple):
    """Per-layer keys k [B, K, D, S] and values v [B, K, S, D], and each row's number of written
    slots `length` [B].

    Keys are stored transposed (slots last) and values slot-major, the layouts the two
    attention dots read without copying. Only valid tokens are written, so slot index == RoPE
    position for every row.
    """
    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    length: jax.Array

    @property
    def max_len(self) -> int:
        return self.v[0].shape[2]


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> KVCache:
    dtype = jnp.dtype(dtype or cfg.dtype)
    k_shape = (batch, cfg.n_kv_heads, cfg.head_dim, max_len)
    v_shape = (batch, cfg.n_kv_heads, max_len, cfg.head_dim)
    return KVCache(tuple(jnp.zeros(k_shape, dtype) for _ in range(cfg.n_layers)),
                   tuple(jnp.zeros(v_shape, dtype) for _ in range(cfg.n_layers)),
                   jnp.zeros((batch,), jnp.int32))


class Transformer(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, mesh=None):
        self.cfg = cfg
        self.mesh = mesh  # only for activation sharding constraints; None on one device
        self.embed = _param(rngs, nnx.initializers.normal(0.02), (cfg.vocab_size, cfg.d_model),
                            cfg.param_dtype, ("vocab", "embed"))
        self.layers = nnx.List([Block(cfg, rngs) for _ in range(cfg.n_layers)])
        self.final_norm = RMSNorm(cfg.d_model, cfg, rngs)
        self.lm_head = (None if cfg.tie_embeddings else
                        _param(rngs, nnx.initializers.normal(0.02), (cfg.d_model, cfg.vocab_size),
                               cfg.param_dtype, ("embed", "vocab")))

    # ---- pieces shared by both entry points ----
    def head(self) -> jax.Array:
        """LM head [d_model, vocab] in the compute dtype (the embedding transposed when tied)."""
        w = self.embed[...].T if self.lm_head is None else self.lm_head[...]
        return w.astype(self.cfg.dtype)

    def logits(self, hidden: jax.Array, head_t: jax.Array | None = None) -> jax.Array:
        """hidden [..., d] -> logits [..., V] in fp32. head_t: the head as [V, d]
        (`decode_kernels()["head"]`) for the few-token form, or None."""
        hidden = hidden.astype(self.cfg.dtype)
        if head_t is not None:
            lead = hidden.shape[:-1]
            out = _small_m_dot(hidden.reshape(-1, hidden.shape[-1]), head_t.astype(self.cfg.dtype),
                               preferred_element_type=jnp.float32)
            return out.reshape(lead + (out.shape[-1],))
        return jnp.einsum("...d,dv->...v", hidden, self.head(), preferred_element_type=jnp.float32)

    def _embed(self, tokens):
        x = jnp.take(self.embed[...], tokens, axis=0).astype(self.cfg.dtype)
        return constrain(x, ("batch", "length", "act_embed"), self.mesh)

    # ---- training forward ----
    def __call__(self, tokens, valid=None, *, positions=None, return_hidden: bool = False):
        """tokens [B, T] int; valid [B, T] bool (padding anywhere) -> logits [B,T,V] f32 or hidden [B,T,d].

        positions default to the running count of valid tokens (so left padding is exact).
        """
        b, t = tokens.shape
        valid = jnp.ones((b, t), bool) if valid is None else valid.astype(bool)
        if positions is None:
            positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
        causal = jnp.tril(jnp.ones((t, t), bool))
        mask = causal[None] & valid[:, None, :]
        x = self._embed(tokens)

        def run(block, x):
            return block(x, positions, mask, self.cfg.attn_block)

        if self.cfg.remat:
            run = nnx.remat(run)
        for block in self.layers:
            x = run(block, x)
            x = constrain(x, ("batch", "length", "act_embed"), self.mesh)
        hidden = self.final_norm(x)
        return hidden if return_hidden else self.logits(hidden)

    # ---- cached forward ----
    def decode_kernels(self) -> dict:
        """The linear kernels and the LM head as [out, in], for `extend(..., kernels=)`.

        For decoding on CPU: XLA:CPU multiplies a few tokens by an [out, in] weight about
        twice as fast as by the [in, out] one the model stores (the LM head [16, 576] x
        [576, 49,152]: 22 -> 13 ms). Build once per rollout, outside the token loop: it costs
        one copy of the linear weights (a tied head is the embedding itself, no copy).
        -> {"layers": ({"q_proj": [out, in], ...} per block), "head": [V, d]}
        """
        layers = tuple({name: getattr(module, name).kernel[...].T
                        for module, names in ((block.attn, ("q_proj", "k_proj", "v_proj", "o_proj")),
                                              (block.mlp, ("gate_proj", "up_proj", "down_proj")))
                        for name in names}
                       for block in self.layers)
        head = self.embed[...] if self.lm_head is None else self.lm_head[...].T
        # materialised: otherwise XLA folds the transposes back into the dots
        return jax.lax.optimization_barrier({"layers": layers, "head": head})

    def extend(self, tokens, n_valid, cache: KVCache, *, output: str = "last", kernels=None):
        """Append the first `n_valid[b]` of `tokens[b]` (right-padded [B, T]) to each row.

        Returns (out, new_cache). `output`: "last" -> logits [B, V] at each row's last
        appended token (undefined for rows with n_valid == 0); "all" -> logits [B, T, V];
        "hidden" -> final hidden [B, T, d]. Rows must fit: length + n_valid <= cache.max_len
        (tokens past the end are dropped; the caller checks the budget). kernels: the result of
        `decode_kernels()` (same outputs, faster few-token steps on CPU), or None.
        """
        b, t = tokens.shape
        s = cache.max_len
        offs = jnp.arange(t)[None, :]
        slots = cache.length[:, None] + offs                            # [B, T]
        write_idx = jnp.where(offs < n_valid[:, None], slots, s)       # s = dropped
        mask = jnp.arange(s)[None, None, :] <= slots[:, :, None]        # [B, T, S]
        x = self._embed(tokens)
        ks, vs = [], []
        for i, block in enumerate(self.layers):
            x, k, v = block.extend(x, slots, mask, cache.k[i], cache.v[i], write_idx,
                                   None if kernels is None else kernels["layers"][i])
            ks.append(k)
            vs.append(v)
        hidden = self.final_norm(x)
        new_cache = KVCache(tuple(ks), tuple(vs), cache.length + n_valid.astype(jnp.int32))
        if output == "hidden":
            return hidden, new_cache
        head_t = None if kernels is None else kernels["head"]
        if output == "all":
            return self.logits(hidden, head_t), new_cache
        if output != "last":
            raise ValueError(f"output must be 'last', 'all' or 'hidden', got {output!r}")
        last = jnp.take_along_axis(hidden, jnp.maximum(n_valid - 1, 0)[:, None, None], axis=1)[:, 0]
        return self.logits(last, head_t), new_cache
