"""Weight maps of the decoder: HF safetensors names and GGUF names -> our parameter paths.

Our paths (dotted nnx state paths): `embed`, `lm_head`, `final_norm.scale`,
`layers.{i}.{input_norm,post_attn_norm}.scale`, `layers.{i}.attn.{q,k,v,o}_proj.{kernel,bias}`,
`layers.{i}.mlp.{gate,up,down}_proj.kernel`. Kernels are [in, out]; torch stores [out, in]
flat. Attention kernels keep a heads axis: q [D, N, H], k/v [D, K, H], o [N, H, D], biases
[N, H] / [K, H] (`transformer.Attention`); the tables reshape them from and to torch's flat rows.
"""
from __future__ import annotations

import numpy as np

from searche1_jax.model.config import ModelConfig
from searche1_jax.model.weight_map import IDENTITY, TRANSPOSE, Rule, Transform

_L = "model.layers.{i}."
_P = "layers.{i}."

def heads_out(n_heads: int, base: Transform = TRANSPOSE) -> Transform:
    """A q/k/v projection: torch [N·H, D] -> `base` -> [D, N·H] -> ours [D, N, H], and back."""
    def to_flax(w):
        k = base.to_flax(w)
        return k.reshape(k.shape[0], n_heads, -1)

    return Transform(f"heads_out({n_heads}, {base.name})", to_flax,
                     lambda k: base.to_hf(k.reshape(k.shape[0], -1)))


def heads_in(n_heads: int) -> Transform:
    """The output projection: torch [D, N·H] -> ours [N, H, D], and back."""
    return Transform(f"heads_in({n_heads})",
                     lambda w: np.ascontiguousarray(w.T).reshape(n_heads, -1, w.shape[0]),
                     lambda k: np.ascontiguousarray(k.reshape(-1, k.shape[-1]).T))


def heads_bias(n_heads: int, base: Transform = IDENTITY) -> Transform:
    """A q/k/v bias: [N·H] -> `base` -> ours [N, H], and back."""
    return Transform(f"heads_bias({n_heads}, {base.name})",
                     lambda b: base.to_flax(b).reshape(n_heads, -1),
                     lambda b: base.to_hf(b.reshape(-1)))


def hf_rules(cfg: ModelConfig) -> list[Rule]:
    """HF safetensors names -> our paths, for a model of `cfg`'s head counts."""
    heads = {"q": cfg.n_heads, "k": cfg.n_kv_heads, "v": cfg.n_kv_heads}
    return [
        Rule("model.embed_tokens.weight", "embed"),
        Rule("lm_head.weight", "lm_head", TRANSPOSE, optional=True),
        Rule("model.norm.weight", "final_norm.scale"),
        Rule(_L + "input_layernorm.weight", _P + "input_norm.scale"),
        Rule(_L + "post_attention_layernorm.weight", _P + "post_attn_norm.scale"),
        *[Rule(_L + f"self_attn.{p}_proj.weight", _P + f"attn.{p}_proj.kernel", heads_out(n))
          for p, n in heads.items()],
        Rule(_L + "self_attn.o_proj.weight", _P + "attn.o_proj.kernel", heads_in(cfg.n_heads)),
        *[Rule(_L + f"self_attn.{p}_proj.bias", _P + f"attn.{p}_proj.bias", heads_bias(n))
          for p, n in heads.items()],
        *[Rule(_L + f"mlp.{p}_proj.weight", _P + f"mlp.{p}_proj.kernel", TRANSPOSE)
          for p in ("gate", "up", "down")],
    ]


# Buffers some exporters write that carry no parameters.
HF_IGNORE = (r"rotary_emb\.inv_freq$",)


def _llama_cpp_permute(n_head: int) -> Transform:
    """llama.cpp's convert script reorders q/k rows from rotate-half to interleaved pairs.

    Its permute is w.reshape(n_head, 2, hd/2, in).swapaxes(1, 2); we apply the inverse on
    import (and the forward permute on export), then transpose [out, in] -> [in, out].
    """
    def to_flax(w):
        out = w.shape[0]
        w = w.reshape(n_head, out // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
        return np.ascontiguousarray(w.T)

    def to_hf(k):
        w = k.T
        out = w.shape[0]
        return np.ascontiguousarray(
            w.reshape(n_head, 2, out // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))

    return Transform(f"llama_cpp_permute({n_head})", to_flax, to_hf)


def _llama_cpp_permute_bias(n_head: int) -> Transform:
    def to_flax(b):
        return np.ascontiguousarray(b.reshape(n_head, b.shape[0] // n_head // 2, 2).swapaxes(1, 2).reshape(-1))

    def to_hf(b):
        return np.ascontiguousarray(b.reshape(n_head, 2, b.shape[0] // n_head // 2).swapaxes(1, 2).reshape(-1))

    return Transform(f"llama_cpp_permute_bias({n_head})", to_flax, to_hf)


def gguf_rules(cfg: ModelConfig, arch: str) -> list[Rule]:
    """GGUF tensor names (llama.cpp) -> our paths. Only llama-arch GGUFs permute q/k."""
    b = "blk.{i}."
    permute = arch == "llama"
    h, k = cfg.n_heads, cfg.n_kv_heads
    q_t = heads_out(h, _llama_cpp_permute(h) if permute else TRANSPOSE)
    k_t = heads_out(k, _llama_cpp_permute(k) if permute else TRANSPOSE)
    qb_t = heads_bias(h, _llama_cpp_permute_bias(h) if permute else IDENTITY)
    kb_t = heads_bias(k, _llama_cpp_permute_bias(k) if permute else IDENTITY)
    return [
        Rule("token_embd.weight", "embed"),
        Rule("output.weight", "lm_head", TRANSPOSE, optional=True),
        Rule("output_norm.weight", "final_norm.scale"),
        Rule(b + "attn_norm.weight", _P + "input_norm.scale"),
        Rule(b + "ffn_norm.weight", _P + "post_attn_norm.scale"),
        Rule(b + "attn_q.weight", _P + "attn.q_proj.kernel", q_t),
        Rule(b + "attn_k.weight", _P + "attn.k_proj.kernel", k_t),
        Rule(b + "attn_v.weight", _P + "attn.v_proj.kernel", heads_out(k)),
        Rule(b + "attn_output.weight", _P + "attn.o_proj.kernel", heads_in(h)),
        Rule(b + "attn_q.bias", _P + "attn.q_proj.bias", qb_t),
        Rule(b + "attn_k.bias", _P + "attn.k_proj.bias", kb_t),
        Rule(b + "attn_v.bias", _P + "attn.v_proj.bias", heads_bias(k)),
        Rule(b + "ffn_gate.weight", _P + "mlp.gate_proj.kernel", TRANSPOSE),
        Rule(b + "ffn_up.weight", _P + "mlp.up_proj.kernel", TRANSPOSE),
        Rule(b + "ffn_down.weight", _P + "mlp.down_proj.kernel", TRANSPOSE),
    ]
