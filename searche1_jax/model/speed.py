"""Backend-specific speed paths, chosen once: `SpeedPolicy.for_backend(platform, batch)`.

Every choice here leaves the numbers as they are (same tokens, same losses up to summation order);
it only picks the form XLA compiles fastest on one backend. The platform test lives in this one
place; the model, the sampler and the losses take the policy (or one of its fields) as an argument.
"""
from __future__ import annotations

import dataclasses

import jax

FEW_ROW_MAX_BATCH = 32   # [out, in] decode kernels pay off up to this many rows (CPU, measured)


@dataclasses.dataclass(frozen=True)
class SpeedPolicy:
    """Which fast path each backend-dependent product takes.

    few_row_kernels: decode multiplies by [out, in] copies of the linear kernels and the LM head
        (`Transformer.few_row_view`). On XLA:CPU a dot of a few rows by an [out, in] weight runs
        faster than by the stored [in, out] one (SmolLM2's MLP shapes: 2.3x at 16 rows, 1.7x at
        32, no gain at 64), which made batch-16 decoding ~1.6x faster for one extra copy of the
        linear weights. GPU and TPU compilers choose their own layouts, so there the copy would
        only cost memory.
    logit_barrier: the chunked log-prob and KL losses fence the [C, d] x [d, V] logit product off
        from the softmax that reads it (pass it as their `barrier=`). XLA:CPU otherwise fuses the
        matmul with the row max into one kernel ~3x below its GEMM rate (jax 0.10.2, a [512, 2048]
        x [2048, 151,936] product: ~35 vs ~120 GFLOP/s); on GPU/TPU that fusion is the fast path.
    """
    few_row_kernels: bool = False
    logit_barrier: bool = False

    @classmethod
    def for_backend(cls, platform: str | None = None, batch: int | None = None) -> SpeedPolicy:
        """The policy for `platform` ("cpu", "gpu", "tpu"; None: JAX's default backend).

        batch: the rows a decode runs at once (None: no decoding, e.g. a training step)."""
        platform = jax.default_backend() if platform is None else platform
        cpu = platform == "cpu"
        return cls(few_row_kernels=cpu and batch is not None and batch <= FEW_ROW_MAX_BATCH,
                   logit_barrier=cpu)
