"""Model hyper-parameters: one `ModelConfig` covers Qwen2 / Qwen2.5 and Llama (SmolLM2).

Qwen2 and Llama share the block (RMSNorm -> GQA attention with RoPE -> RMSNorm -> SwiGLU MLP);
Qwen adds a bias on q/k/v. Numbers of the presets are the published HF configs (METHOD §6).
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    mlp_dim: int
    rope_theta: float = 1e6
    rms_eps: float = 1e-6
    qkv_bias: bool = True           # Qwen2: True; Llama: False
    tie_embeddings: bool = True     # LM head = embedding^T
    family: str = "qwen2"           # "qwen2" | "llama": the HF model_type written on export
    param_dtype: str = "float32"    # storage dtype of parameters
    dtype: str = "float32"          # compute dtype (bf16 on accelerators); softmax/RoPE/norm stay fp32
    remat: bool = False             # rematerialise each block in the backward pass
    attn_block: int = 128           # training forward: causal attention in query blocks of this
                                    # many tokens, skipping future keys (0 = one dense square)
    scan_layers: bool = False       # layers stored stacked [n_layers, ...] and run by one
                                    # lax.scan (MaxText's scan_layers): each compiled program holds
                                    # the block's code once instead of n_layers times

    def __post_init__(self):
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads "
                             f"({self.n_kv_heads}) for grouped-query attention")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.attn_block < 0:
            raise ValueError(f"attn_block must be >= 0 (0 = dense attention), got {self.attn_block}")
        if self.family not in ("qwen2", "llama"):
            raise ValueError(f"family must be 'qwen2' or 'llama', got {self.family!r}")

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    @property
    def block_params(self) -> int:
        """Parameters of one decoder layer (attention, MLP, its two norms)."""
        d, h, k, hd = self.d_model, self.n_heads, self.n_kv_heads, self.head_dim
        attn = d * h * hd + 2 * d * k * hd + h * hd * d
        if self.qkv_bias:
            attn += h * hd + 2 * k * hd
        return attn + 3 * d * self.mlp_dim + 2 * d

    @property
    def num_params(self) -> int:
        """Parameter count (embeddings counted once when tied)."""
        head = 0 if self.tie_embeddings else self.vocab_size * self.d_model
        return self.vocab_size * self.d_model + self.n_layers * self.block_params + self.d_model + head


PRESETS: dict[str, ModelConfig] = {
    # Qwen2.5 HF configs (Qwen/Qwen2.5-*/config.json).
    "qwen2.5-0.5b": ModelConfig(vocab_size=151936, d_model=896, n_layers=24, n_heads=14,
                                n_kv_heads=2, head_dim=64, mlp_dim=4864),
    "qwen2.5-1.5b": ModelConfig(vocab_size=151936, d_model=1536, n_layers=28, n_heads=12,
                                n_kv_heads=2, head_dim=128, mlp_dim=8960),
    "qwen2.5-3b": ModelConfig(vocab_size=151936, d_model=2048, n_layers=36, n_heads=16,
                              n_kv_heads=2, head_dim=128, mlp_dim=11008),
    "qwen2.5-7b": ModelConfig(vocab_size=152064, d_model=3584, n_layers=28, n_heads=28,
                              n_kv_heads=4, head_dim=128, mlp_dim=18944, tie_embeddings=False),
    # HuggingFaceTB/SmolLM2-135M-Instruct: Llama block, tied embeddings.
    "smollm2-135m": ModelConfig(vocab_size=49152, d_model=576, n_layers=30, n_heads=9,
                                n_kv_heads=3, head_dim=64, mlp_dim=1536, rope_theta=1e5,
                                rms_eps=1e-5, qkv_bias=False, family="llama"),
    # Random tiny model for tests and CI.
    "tiny": ModelConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                        head_dim=16, mlp_dim=128),
}


def get_preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; valid presets: {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)
