"""Random packed GRPO batches for the train-step tests (prompt tokens masked, response trained)."""
import numpy as np

from searche1_jax.train.batching import pack


def random_grpo_batch(vocab_size: int, *, seed: int, rows: int = 8, length: int = 24) -> dict[str, np.ndarray]:
    """[rows, length] tokens / valid / loss_mask: a 3-7 token prompt, a 4..length-9 token response;
    advantages [rows] ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    seqs, masks = [], []
    for _ in range(rows):
        p, r = rng.integers(3, 8), rng.integers(4, length - 8)
        seqs.append(list(rng.integers(0, vocab_size, p + r)))
        masks.append([0] * p + [1] * r)
    b = pack(seqs, masks, length=length)
    b["advantages"] = rng.normal(size=rows).astype(np.float32)
    return b
