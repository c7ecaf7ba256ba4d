"""The retrieval interface every index speaks: `search(queries, k) -> list[list[Passage]]`.

`Index` validates input and turns corpus rows into `Passage`s; subclasses implement
`_search_rows(queries, k) -> (scores [Q, k] f32, rows [Q, k] i64)`, a row of -1 meaning "no
passage" (BM25 for a query with no indexable word: that query gets fewer than k, possibly none). Dense indexes add
`search_vectors(q [Q, d], k)` so they can be used (and tested) on raw vectors.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from searche1_jax.retrieval.corpus import Corpus, join_contents


@dataclasses.dataclass(frozen=True)
class Passage:
    """One retrieved passage. `title` is bare (no quotes); `contents` is the wiki-18 field."""
    id: str
    title: str
    text: str
    score: float

    @property
    def contents(self) -> str:
        return join_contents(self.title, self.text)


def check_queries(queries: Sequence[str], k: int, num_passages: int) -> None:
    """ValueError for input a retriever cannot answer (shared by in-process search and the server)."""
    if isinstance(queries, str) or not isinstance(queries, (list, tuple)):
        raise ValueError(f"queries must be a list of strings, got {type(queries).__name__}")
    for i, q in enumerate(queries):
        if not isinstance(q, str):
            raise ValueError(f"queries[{i}] must be a string, got {type(q).__name__}")
        if not q.strip():
            raise ValueError(f"queries[{i}] is empty: every query needs some text")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"topk must be an integer, got {k!r}")
    if k <= 0:
        raise ValueError(f"topk must be >= 1, got {k}")
    if k > num_passages:
        raise ValueError(f"topk={k} exceeds the {num_passages} passages in the index")


class Index:
    """Base class: subclasses set `self.corpus` and implement `_search_rows`."""
    kind = "abstract"
    corpus: Corpus | None = None

    @property
    def num_passages(self) -> int:
        raise NotImplementedError

    def _search_rows(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def search(self, queries: Sequence[str], k: int = 3) -> list[list[Passage]]:
        """Top-k passages per query, best first; fewer (even none) where the index has no match."""
        check_queries(queries, k, self.num_passages)
        if not queries:
            return []
        if self.corpus is None:
            raise ValueError(f"this {self.kind} index has no corpus attached; use search_vectors or "
                             f"pass corpus=Corpus(path)")
        scores, rows = self._search_rows(list(queries), int(k))
        docs = self.corpus.passages(rows[rows >= 0].tolist())
        return [[Passage(*docs[r], s) for s, r in zip(srow.tolist(), rrow.tolist()) if r >= 0]
                for srow, rrow in zip(scores, rows)]


class DenseIndex(Index):
    """Encoder + vector search: queries are embedded with `encoder.encode_queries`."""

    def __init__(self, corpus: Corpus | None, encoder, dim: int):
        self.corpus, self.encoder, self.dim = corpus, encoder, dim
        if encoder is not None and encoder.dim != dim:
            raise ValueError(f"encoder {getattr(encoder, 'name', '?')!r} makes {encoder.dim}-d vectors but "
                             f"this index holds {dim}-d vectors: use the encoder that built the index")
        if corpus is not None and len(corpus) != self.num_passages:
            raise ValueError(f"corpus {corpus.path} has {len(corpus)} passages but the index holds "
                             f"{self.num_passages} vectors")

    def search_vectors(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _search_rows(self, queries, k):
        if self.encoder is None:
            raise ValueError(f"this {self.kind} index has no query encoder attached; pass encoder=...")
        return self.search_vectors(self.encoder.encode_queries(queries), k)

    def _check_vectors(self, q: np.ndarray, k: int) -> np.ndarray:
        q = np.asarray(q, np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query vectors must be [Q, {self.dim}], got {list(q.shape)}")
        if not 1 <= k <= self.num_passages:
            raise ValueError(f"k must be in [1, {self.num_passages}], got {k}")
        return q
