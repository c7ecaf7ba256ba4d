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

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from searche1_jax.model.config import ModelConfig
from searche1_jax.model.kv_cache import CACHE_K_AXES, CACHE_V_AXES, KVCache, init_cache
from searche1_jax.model.sharding import DEFAULT_RULES, Layout, constrain, hashable_rules

_NEG = -1e30  # finite "minus infinity": a fully masked row stays NaN-free


def _ordered_remat(fn):
    """fn(state, x, *aux) with its activations recomputed in the backward pass, after the
    cotangent of its output has arrived.

    `jax.checkpoint` fences the recomputation's inputs with an optimization barrier, which XLA:CPU
    removes before CSE and scheduling: the recomputation merges back into the forward pass and
    nothing is saved (SmolLM2-135M warm-start step, 4 x 512 tokens: nnx.remat took the compiled
    temp from 6.84 GB to 6.46 GB only). Here the recomputation of a block also depends on the
    cotangent of its output (x + 0·g[0]: exact for finite g), so it cannot merge with the forward
    and runs after the next block's backward: one block's activations are live at a time, on
    every backend. aux (positions, mask) get no cotangent.
    """
    @jax.custom_vjp
    def f(state, x, *aux):
        return fn(state, x, *aux)

    def fwd(state, x, *aux):
        return fn(state, x, *aux), (state, x, aux)

    def bwd(res, g):
        state, x, aux, g = jax.lax.optimization_barrier(res + (g,))
        # XLA:CPU drops optimization barriers before scheduling (and would then merge the
        # recomputation with the forward pass): a data dependency on g survives there too
        x = x + (g.reshape(-1)[0] * 0).astype(x.dtype)
        _, pull = jax.vjp(lambda s, h: fn(s, h, *aux), state, x)
        return (*pull(g), *(None for _ in aux))

    f.defvjp(fwd, bwd)
    return f


def _param(rngs: nnx.Rngs, init, shape, dtype, axes) -> nnx.Param:
    return nnx.Param(init(rngs.params(), shape, jnp.dtype(dtype)), logical_axes=axes)


class Linear(nnx.Module):
    """y = x @ kernel (+ bias) over the trailing `in_shape` axes of x, giving `out_shape` axes.

    kernel [*in_shape, *out_shape] (HF stores [out, in] flat), or [*out_shape, *in_shape] when
    `out_in` (only in a `Transformer.few_row_view`, for few-token decode steps). Attention
    kernels keep their heads axis (q [D, N, H], o [N, H, D], as Tunix's einsum layout), so a
    sharding rule over `heads` splits whole heads and never cuts one; the product itself runs
    on the flattened 2-D views, a free reshape of the kernel (heads are the major axis).
    """

    def __init__(self, in_shape, out_shape, axes, *, bias: bool, cfg: ModelConfig, rngs: nnx.Rngs):
        in_shape, out_shape = _dims(in_shape), _dims(out_shape)
        self.kernel = _param(rngs, nnx.initializers.normal(0.02), in_shape + out_shape, cfg.param_dtype, axes)
        self.bias = (_param(rngs, nnx.initializers.zeros, out_shape, cfg.param_dtype, axes[len(in_shape):])
                     if bias else None)
        self.n_in, self.n_out = len(in_shape), len(out_shape)
        self.dtype = jnp.dtype(cfg.dtype)
        self.out_in = False

    def __call__(self, x):
        # A 2-D [tokens, in] operand: XLA:CPU runs the backward's weight-gradient dot
        # (contracting the token axis) ~15% faster than over [B, T, in].
        lead = x.shape[:x.ndim - self.n_in]
        x2 = x.reshape(math.prod(lead), -1).astype(self.dtype)
        w = self.kernel[...].astype(self.dtype)
        if self.out_in:
            out_shape = w.shape[:self.n_out]
            y = _small_m_dot(x2, w.reshape(math.prod(out_shape), -1))
        else:
            out_shape = w.shape[self.n_in:]
            y = x2 @ w.reshape(x2.shape[-1], -1)
        y = y.reshape(lead + out_shape)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


def _dims(shape) -> tuple[int, ...]:
    return (int(shape),) if np.ndim(shape) == 0 else tuple(int(s) for s in shape)


def _small_m_dot(x, w_t, preferred_element_type=None):
    """x [M, in] @ w_t[out, in]^T for a handful of tokens M (decode).

    XLA:CPU runs a few-row dot about twice as fast with the weight as the row-major left
    operand and the output [out, M]; the barrier keeps the small transpose back to [M, out]
    from being folded into the dot, which would bring back the slow form.
    """
    y_t = jnp.einsum("oi,mi->om", w_t, x, preferred_element_type=preferred_element_type)
    return jax.lax.optimization_barrier(y_t).T


@partial(jax.jit, static_argnums=(1, 2))
def _transposed(ws: tuple, n_ins: tuple[int, ...], leads: tuple[int, ...]) -> tuple:
    """Each kernel [*lead, *in, *out] (after `lead` stacked-layer axes, n_in input axes) ->
    [*lead, *out, *in], materialised: otherwise XLA folds the transposes back into the dots."""
    return jax.lax.optimization_barrier(tuple(
        w.transpose(tuple(range(a)) + tuple(range(a + n, w.ndim)) + tuple(range(a, a + n)))
        for w, n, a in zip(ws, n_ins, leads)))


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


def attend_cached(q, k, v, mask, block: int):
    """`attend` of T appended queries over the KV cache (k [B,K,D,S], v [B,K,S,D]) in query
    blocks of `block` under a `lax.map`, so one block's fp32 scores [B, K, block, G, S] are live
    instead of all T's: an observation of 512 tokens appended to 640 rows of a 4,352-slot cache
    held 23 GB of Qwen2.5-3B scores a device (plan --aot). Exact: each query's softmax is its
    own. block <= 0 or T <= block (a decode step): one call."""
    b, t = q.shape[:2]
    if block <= 0 or t <= block:
        return attend(q, k, v, mask, cached=True)
    nb = -(-t // block)
    pad = nb * block - t   # padded queries see no slot (uniform softmax over _NEG): dropped below
    qb = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(b, nb, block, *q.shape[2:]).swapaxes(0, 1)
    mb = jnp.pad(mask, ((0, 0), (0, pad), (0, 0))).reshape(b, nb, block, mask.shape[-1]).swapaxes(0, 1)
    out = jax.lax.map(lambda a: attend(a[0], k, v, a[1], cached=True), (qb, mb))
    return out.swapaxes(0, 1).reshape(b, nb * block, *out.shape[3:])[:, :t]


class Attention(nnx.Module):
    """q [D, N, H], k/v [D, K, H] and o [N, H, D] kernels: heads are an axis of their own."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, h, k, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        kv_axes = ("embed", "kv_heads", "head_dim")
        self.q_proj = Linear(d, (h, hd), ("embed", "heads", "head_dim"), bias=cfg.qkv_bias, cfg=cfg, rngs=rngs)
        self.k_proj = Linear(d, (k, hd), kv_axes, bias=cfg.qkv_bias, cfg=cfg, rngs=rngs)
        self.v_proj = Linear(d, (k, hd), kv_axes, bias=cfg.qkv_bias, cfg=cfg, rngs=rngs)
        self.o_proj = Linear((h, hd), d, ("heads", "head_dim", "embed"), bias=False, cfg=cfg, rngs=rngs)
        self.theta = cfg.rope_theta

    def qkv(self, x, positions):
        """x [B, T, D] -> q [B, T, N, H], k and v [B, T, K, H] (q and k roped)."""
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        return rope(q, positions, self.theta), rope(k, positions, self.theta), v

    def out(self, o):
        """o [B, T, N, H] -> [B, T, D]."""
        return self.o_proj(o)


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, m = cfg.d_model, cfg.mlp_dim
        self.gate_proj = Linear(d, m, ("embed", "mlp"), bias=False, cfg=cfg, rngs=rngs)
        self.up_proj = Linear(d, m, ("embed", "mlp"), bias=False, cfg=cfg, rngs=rngs)
        self.down_proj = Linear(m, d, ("mlp", "embed"), bias=False, cfg=cfg, rngs=rngs)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.input_norm = RMSNorm(cfg.d_model, cfg, rngs)
        self.attn = Attention(cfg, rngs)
        self.post_attn_norm = RMSNorm(cfg.d_model, cfg, rngs)
        self.mlp = MLP(cfg, rngs)
        self.attn_block = cfg.attn_block   # query block of appends over the cache (attend_cached)

    def __call__(self, x, positions, mask, attn_block: int = 0):
        q, k, v = self.attn.qkv(self.input_norm(x), positions)
        x = x + self.attn.out(attend_causal(q, k, v, mask, attn_block))
        return x + self.mlp(self.post_attn_norm(x))

    def extend(self, x, positions, mask, k_cache, v_cache, write_idx, layer=None):
        """Append this chunk's keys/values at `write_idx` [B, T] (out of range = dropped).

        layer: None, k_cache [B,K,D,S] and v_cache [B,K,S,D] are this block's; or a traced
        int and they are the stacked [L, ...] caches (scan_layers) of which this block is
        layer `layer`: written in place there and its slice read, so a scan over layers can
        carry the whole cache and never holds a second copy of it (scanning the cache as xs
        and ys did: 2x the decode program's temp)."""
        q, k, v = self.attn.qkv(self.input_norm(x), positions)
        # k_cache [B,K,D,S], v_cache [B,K,S,D] (stacked: [L, B, ...]); k, v [B,T,K,D]. Written
        # row by row (vmap over the rows' axis): a scatter indexed by an explicit row iota over
        # rows sharded on the mesh made XLA all-gather every row's new keys, values and slots to
        # every device, each layer, each decode step; the batched scatter stays on the device
        # that holds the row.
        # (a row's new [T,K,D]: indexed by the slots alone the result keeps the slots' axis in
        # place; with the layer too, two advanced indices apart put the slots first: [T,K,D])
        at = () if layer is None else (layer,)
        ax = 0 if layer is None else 1
        k_new = (lambda n: jnp.moveaxis(n, 0, -1)) if layer is None else (lambda n: n)  # noqa: E731
        v_new = (lambda n: jnp.moveaxis(n, 0, 1)) if layer is None else (lambda n: n)  # noqa: E731
        put_k = lambda c, new, i: c.at[at + (slice(None), slice(None), i)].set(k_new(new), mode="drop")  # noqa: E731
        put_v = lambda c, new, i: c.at[at + (slice(None), i)].set(v_new(new), mode="drop")  # noqa: E731
        k_cache = jax.vmap(put_k, in_axes=(ax, 0, 0), out_axes=ax)(k_cache, k.astype(k_cache.dtype), write_idx)
        v_cache = jax.vmap(put_v, in_axes=(ax, 0, 0), out_axes=ax)(v_cache, v.astype(v_cache.dtype), write_idx)
        k_l, v_l = (k_cache, v_cache) if layer is None else (k_cache[layer], v_cache[layer])
        x = x + self.attn.out(attend_cached(q, k_l.astype(q.dtype), v_l.astype(q.dtype), mask, self.attn_block))
        return x + self.mlp(self.post_attn_norm(x)), k_cache, v_cache


def stack_blocks(blocks: list[Block]) -> Block:
    """One Block holding the L blocks' parameters stacked [L, ...], logical axis `layers` first
    (the layout `Transformer` scans over when `cfg.scan_layers`). Stacking built blocks, rather
    than initialising a stacked one, gives the same random weights as the unrolled model of
    the same seed. Reuses (and changes) blocks[0]."""
    stacked = blocks[0]
    per_block = [dict(nnx.iter_modules(b)) for b in blocks]
    for path, module in list(nnx.iter_modules(stacked)):
        for name, var in list(vars(module).items()):
            if isinstance(var, nnx.Param):
                value = jnp.stack([getattr(m[path], name)[...] for m in per_block])
                axes = ("layers",) + tuple(var.get_metadata()["logical_axes"])
                setattr(module, name, nnx.Param(value, logical_axes=axes))
    return stacked


class Transformer(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, mesh=None, rules=DEFAULT_RULES):
        self.cfg = cfg
        self.mesh = mesh  # only for activation sharding constraints; None on one device
        self.rules = rules  # logical axis -> mesh axes (config.logical_axis_rules)
        self.embed = _param(rngs, nnx.initializers.normal(0.02), (cfg.vocab_size, cfg.d_model),
                            cfg.param_dtype, ("vocab", "embed"))
        blocks = [Block(cfg, rngs) for _ in range(cfg.n_layers)]
        # scan_layers: one Block of stacked [L, ...] parameters, run by lax.scan
        self.layers = stack_blocks(blocks) if cfg.scan_layers else nnx.List(blocks)
        self.final_norm = RMSNorm(cfg.d_model, cfg, rngs)
        self.lm_head = (None if cfg.tie_embeddings else
                        _param(rngs, nnx.initializers.normal(0.02), (cfg.d_model, cfg.vocab_size),
                               cfg.param_dtype, ("embed", "vocab")))
        self.head_out_in = False  # lm_head stored [V, d] (a `few_row_view`; a tied head is [V, d] already)

    # ---- pieces shared by both entry points ----
    def layout(self) -> Layout | None:
        """This model's mesh and rules for the chunked losses (`rl.rows`); None on one device."""
        if self.mesh is None:
            return None
        return Layout(self.mesh, hashable_rules(self.rules))

    def _head_rows(self) -> jax.Array:
        """The LM head as stored rows [V, d]: the embedding when tied, else the [V, d] copy."""
        return self.embed[...] if self.lm_head is None else self.lm_head[...]

    def head(self) -> jax.Array:
        """LM head [d_model, vocab] in the compute dtype (the embedding transposed when tied)."""
        w = self._head_rows().T if self.lm_head is None or self.head_out_in else self.lm_head[...]
        return w.astype(self.cfg.dtype)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """hidden [..., d] -> logits [..., V] in fp32 (the few-row form in a `few_row_view`)."""
        hidden = hidden.astype(self.cfg.dtype)
        if self.head_out_in:
            lead = hidden.shape[:-1]
            out = _small_m_dot(hidden.reshape(-1, hidden.shape[-1]),
                               self._head_rows().astype(self.cfg.dtype),
                               preferred_element_type=jnp.float32)
            return out.reshape(lead + (out.shape[-1],))
        return jnp.einsum("...d,dv->...v", hidden, self.head(), preferred_element_type=jnp.float32)

    def _embed(self, tokens):
        x = jnp.take(self.embed[...], tokens, axis=0).astype(self.cfg.dtype)
        return constrain(x, ("batch", "length", "act_embed"), self.mesh, self.rules)

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

        attn_block = self.cfg.attn_block

        def run(graphdef, state, h):
            layer = lambda s, h, p, m: nnx.merge(graphdef, s)(h, p, m, attn_block)  # noqa: E731
            h = (_ordered_remat(layer) if self.cfg.remat else layer)(state, h, positions, mask)
            return constrain(h, ("batch", "length", "act_embed"), self.mesh, self.rules)

        if self.cfg.scan_layers:
            graphdef, stacked = nnx.split(self.layers)
            x, _ = jax.lax.scan(lambda h, s: (run(graphdef, s, h), None), x, stacked)
        else:
            for block in self.layers:
                x = run(*nnx.split(block), x)
        hidden = self.final_norm(x)
        return hidden if return_hidden else self.logits(hidden)

    # ---- cached forward ----
    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        """`init_cache` on this model's mesh and rules (sharded when the model is)."""
        return init_cache(self.cfg, batch, max_len, dtype, mesh=self.mesh, rules=self.rules)

    def few_row_view(self) -> Transformer:
        """This model with its linear kernels and LM head stored [out, in], for decoding on CPU.

        XLA:CPU multiplies a few tokens by an [out, in] weight about twice as fast as by the
        [in, out] one the model stores (the LM head [16, 576] x [576, 49,152]: 22 -> 13 ms).
        Same outputs as the model; used when `SpeedPolicy.few_row_kernels`. Build once per
        rollout, outside the token loop: it costs one copy of the linear weights (a tied head is
        the embedding itself, no copy); everything else is shared with this model. Idempotent.
        """
        if self.head_out_in:
            return self
        view = nnx.clone(self)
        found = [(p, m) for p, m in nnx.iter_modules(view) if isinstance(m, Linear)]
        linears = [m for _, m in found]
        # a scanned model's kernels carry the layers axis first: it stays first
        leads = tuple(int(self.cfg.scan_layers and p[0] == "layers") for p, _ in found)
        untied = view.lm_head is not None
        rows = _transposed(tuple(m.kernel[...] for m in linears)
                           + ((view.lm_head[...],) if untied else ()),
                           tuple(m.n_in for m in linears) + ((1,) if untied else ()),
                           leads + ((0,) if untied else ()))
        for m, w, a in zip(linears, rows, leads):
            axes = m.kernel.get_metadata()["logical_axes"]
            m.kernel = nnx.Param(w, logical_axes=axes[:a] + axes[a + m.n_in:] + axes[a:a + m.n_in])
            m.out_in = True
        if untied:
            view.lm_head = nnx.Param(rows[-1], logical_axes=("vocab", "embed"))
        view.head_out_in = True
        return view

    def extend(self, tokens, n_valid, cache: KVCache, *, output: str = "last"):
        """Append the first `n_valid[b]` of `tokens[b]` (right-padded [B, T]) to each row.

        Returns (out, new_cache). `output`: "last" -> logits [B, V] at each row's last
        appended token (undefined for rows with n_valid == 0); "all" -> logits [B, T, V];
        "hidden" -> final hidden [B, T, d]. Rows must fit: length + n_valid <= cache.max_len
        (tokens past the end are dropped; the caller checks the budget).
        """
        b, t = tokens.shape
        s = cache.max_len
        offs = jnp.arange(t)[None, :]
        slots = cache.length[:, None] + offs                            # [B, T]
        write_idx = jnp.where(offs < n_valid[:, None], slots, s)       # s = dropped
        mask = jnp.arange(s)[None, None, :] <= slots[:, :, None]        # [B, T, S]
        x = self._embed(tokens)

        def run(block, h, k, v, layer=None):
            h, k, v = block.extend(h, slots, mask, k, v, write_idx, layer)
            # the new cache keeps the old one's layout, so a donated cache is updated in place
            lead = () if layer is None else ("layers",)
            return (h, constrain(k, lead + CACHE_K_AXES, self.mesh, self.rules),
                    constrain(v, lead + CACHE_V_AXES, self.mesh, self.rules))

        if self.cfg.scan_layers:
            if not cache.stacked:
                raise ValueError("a scan_layers model reads a stacked KV cache [L, ...]: make it "
                                 "with model.init_cache (or init_cache of the same ModelConfig)")
            graphdef, stacked = nnx.split(self.layers)

            def body(carry, xs):   # the whole stacked cache is carried, layer i updated in place
                state, i = xs
                return run(nnx.merge(graphdef, state), *carry, layer=i), None

            (x, ks, vs), _ = jax.lax.scan(body, (x, cache.k, cache.v),
                                          (stacked, jnp.arange(self.cfg.n_layers)))
        else:
            ks, vs = [], []
            for i, block in enumerate(self.layers):
                x, k, v = run(block, x, cache.k[i], cache.v[i])
                ks.append(k)
                vs.append(v)
            ks, vs = tuple(ks), tuple(vs)
        hidden = self.final_norm(x)
        new_cache = KVCache(ks, vs, cache.length + n_valid.astype(jnp.int32))
        if output == "hidden":
            return hidden, new_cache
        if output == "all":
            return self.logits(hidden), new_cache
        if output != "last":
            raise ValueError(f"output must be 'last', 'all' or 'hidden', got {output!r}")
        last = jnp.take_along_axis(hidden, jnp.maximum(n_valid - 1, 0)[:, None, None], axis=1)[:, 0]
        return self.logits(last), new_cache
