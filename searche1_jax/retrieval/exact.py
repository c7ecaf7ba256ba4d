"""Exact inner-product search: chunked jax matmul + lax.top_k with a running merge.

The oracle for ANN indexes and the default for small corpora. Memory per call is
[Q, chunk] scores, never [Q, N]; the database sits on device as [C, chunk, d] (zero padded).
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from searche1_jax.retrieval.index import DenseIndex
from searche1_jax.shapes import next_pow2, round_up

EMBEDDINGS_FILE = "embeddings.npy"


BLOCK = 128


def block_top_k(s: jax.Array, k: int, block: int = BLOCK) -> tuple[jax.Array, jax.Array]:
    """Exact top-k of s [Q, C] (C % block == 0) without sorting all C columns.

    The k best entries lie in the k blocks with the largest maxima: an entry in any other block
    is beaten by those k block maxima, so it cannot be in the top k (up to ties). So take the
    block maxima, top-k them, and top-k again over the k * block candidates. XLA's CPU top_k
    sorts each row, so this turns an O(C log C) sort into O(C) max plus two small sorts.
    """
    q, c = s.shape
    nb = c // block
    if nb <= k:
        return jax.lax.top_k(s, k)
    blocks = s.reshape(q, nb, block)
    _, bi = jax.lax.top_k(blocks.max(-1), k)  # [Q, k] block ids
    cand = jnp.take_along_axis(blocks, bi[..., None], axis=1).reshape(q, k * block)
    ts, ti = jax.lax.top_k(cand, k)
    cols = jnp.take_along_axis(bi, ti // block, axis=1) * block + ti % block
    return ts, cols


@functools.partial(jax.jit, static_argnames=("k", "n", "start"))
def chunked_top_k(q: jax.Array, db: jax.Array, *, k: int, n: int, start: int = 0) -> tuple[jax.Array, jax.Array]:
    """q [Q, d], db [C, chunk, d] holding rows start.. of the database (rows >= n are padding)
    -> (scores [Q, k], rows [Q, k] i32)."""
    nq, chunk = q.shape[0], db.shape[1]

    def step(carry, xs):
        best_s, best_i = carry
        block, c = xs
        s = q @ block.T  # [Q, chunk]
        rows = start + c * chunk + jnp.arange(chunk, dtype=jnp.int32)
        s = jnp.where(rows[None] < n, s, -jnp.inf)
        ts, ti = block_top_k(s, k)
        all_s = jnp.concatenate([best_s, ts], axis=1)
        all_i = jnp.concatenate([best_i, rows[ti]], axis=1)
        ns, sel = jax.lax.top_k(all_s, k)
        return (ns, jnp.take_along_axis(all_i, sel, axis=1)), None

    init = (jnp.full((nq, k), -jnp.inf, jnp.float32), jnp.full((nq, k), -1, jnp.int32))
    (scores, rows), _ = jax.lax.scan(step, init, (db, jnp.arange(db.shape[0], dtype=jnp.int32)))
    return scores, rows


@functools.partial(jax.jit, static_argnames=("k",))
def merge_top_k(s1, r1, s2, r2, *, k: int) -> tuple[jax.Array, jax.Array]:
    """The best k of two (scores, rows) lists of the same queries."""
    s, sel = jax.lax.top_k(jnp.concatenate([s1, s2], axis=1), k)
    return s, jnp.take_along_axis(jnp.concatenate([r1, r2], axis=1), sel, axis=1)


class ExactIndex(DenseIndex):
    """Brute-force maximum inner product over all vectors (exact top-k).

    Memory: one device copy of the vectors. The whole chunks go to the device straight from the
    caller's array (a reshaped view, no padded host copy) and only the last, partial chunk is
    padded; the index keeps no host copy of its own (at 1M x 768 that was 3 copies, 9 GB, while
    building: RESULTS "the synthetic table at scale")."""
    kind = "exact"

    def __init__(self, embeddings: np.ndarray, corpus=None, encoder=None, *, chunk_size: int = 32768):
        emb = np.asarray(embeddings, np.float32)
        if emb.ndim != 2 or len(emb) == 0:
            raise ValueError(f"embeddings must be a non-empty [N, d] array, got shape {list(emb.shape)}")
        n, d = emb.shape
        chunk = min(chunk_size, round_up(n, BLOCK))  # a multiple of BLOCK (padding is masked)
        full = n // chunk
        self._db = jax.device_put(emb[:full * chunk].reshape(full, chunk, d)) if full else None
        self._tail = None
        if n > full * chunk:
            tail = np.zeros((1, chunk, d), np.float32)
            tail[0, :n - full * chunk] = emb[full * chunk:]
            self._tail = jax.device_put(tail)
        self._n, self._chunk, self._full_rows = n, chunk, full * chunk
        super().__init__(corpus, encoder, d)

    @property
    def num_passages(self) -> int:
        return self._n

    @property
    def embeddings(self) -> np.ndarray:
        """The vectors [N, d] (a host copy, assembled on each call)."""
        parts = ([np.asarray(self._db).reshape(-1, self.dim)] if self._db is not None else [])
        if self._tail is not None:
            parts.append(np.asarray(self._tail)[0, :self._n - self._full_rows])
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def search_vectors(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [Q, k] f32, rows [Q, k] i64), best first."""
        q = self._check_vectors(queries, k)
        if k > self._chunk:
            raise ValueError(f"k={k} exceeds the chunk size {self._chunk}")
        nq = len(q)
        qp = np.zeros((next_pow2(nq, 8), self.dim), np.float32)  # few query-batch shapes -> few compiles
        qp[:nq] = q
        qp = jnp.asarray(qp)
        found = []
        if self._db is not None:
            found.append(chunked_top_k(qp, self._db, k=int(k), n=self._n))
        if self._tail is not None:
            found.append(chunked_top_k(qp, self._tail, k=int(k), n=self._n, start=self._full_rows))
        s, r = found[0] if len(found) == 1 else merge_top_k(*found[0], *found[1], k=int(k))
        return np.asarray(s)[:nq], np.asarray(r)[:nq].astype(np.int64)

    def save(self, directory: str) -> None:
        tmp = os.path.join(directory, EMBEDDINGS_FILE + ".tmp.npy")
        np.save(tmp, self.embeddings)
        os.replace(tmp, os.path.join(directory, EMBEDDINGS_FILE))

    @classmethod
    def load(cls, directory: str, corpus=None, encoder=None) -> "ExactIndex":
        path = os.path.join(directory, EMBEDDINGS_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} missing: {directory} is not a complete exact index")
        return cls(np.load(path, mmap_mode="r"), corpus, encoder)
