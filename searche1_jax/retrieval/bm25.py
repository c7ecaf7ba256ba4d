"""BM25 sparse index over the corpus `contents` (bm25s, Lucene scoring, English stopwords).

The sparse baseline and the CPU demo default: indexes 24k passages in about a second and
needs no encoder. Text per passage = the wiki-18 `contents` (title line + text), as Search-R1's
pyserini BM25 indexes it.

Scoring backends (`backend=`): "numpy" (bm25s's default: `np.add.at` over each query's postings,
then a partition over the corpus) or "numba" (bm25s's compiled scorer and top-k: ~10x faster on a
burst, the same scores; each process compiles it once, ~5-20 s, so `warm_up()` runs it at load).
"auto" is numba when it is installed. The server (`serve.py --bm25-backend`, default auto) takes
numba; in-process retrieval (config.retrieval.bm25_backend, default numpy) keeps numpy, where a
rollout's few queries would not repay the compile.
"""
from __future__ import annotations

import os

import numpy as np

from searche1_jax.retrieval.corpus import Corpus
from searche1_jax.retrieval.index import Index

BM25_DIR = "bm25"
STOPWORDS = "en"
BACKENDS = ("numpy", "numba", "auto")


def resolve_backend(backend: str) -> str:
    """"numpy" | "numba" | "auto" -> the backend bm25s will use (auto: numba when installed)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown BM25 backend {backend!r}: use one of {BACKENDS} "
                         f"(config.retrieval.bm25_backend, or serve.py --bm25-backend)")
    try:
        import numba  # noqa: F401
        have = True
    except ImportError:
        have = False
    if backend == "numba" and not have:
        raise ValueError("BM25 backend 'numba' needs the numba package: pip install -r requirements.txt "
                         "(it pins numba), or use backend 'numpy'")
    if backend == "auto":
        return "numba" if have else "numpy"
    return backend


def _tokenize(texts: list[str], return_ids: bool):
    import bm25s

    return bm25s.tokenize(texts, stopwords=STOPWORDS, return_ids=return_ids, show_progress=False)


class BM25Index(Index):
    kind = "bm25"

    def __init__(self, retriever, corpus: Corpus, *, backend: str = "numpy"):
        self.retriever, self.corpus = retriever, corpus
        self.backend = retriever.backend = resolve_backend(backend)
        n = int(retriever.scores["num_docs"])
        if corpus is not None and len(corpus) != n:
            raise ValueError(f"corpus {corpus.path} has {len(corpus)} passages but the BM25 index holds {n}")
        self._n = n
        self.empty_queries = 0  # queries with no indexable word, answered with no passages

    @property
    def num_passages(self) -> int:
        return self._n

    @classmethod
    def build(cls, corpus: Corpus, *, k1: float = 1.5, b: float = 0.75, backend: str = "numpy") -> "BM25Index":
        import bm25s

        texts = corpus.texts(range(len(corpus)))
        retriever = bm25s.BM25(k1=k1, b=b)
        retriever.index(_tokenize(texts, return_ids=True), show_progress=False)
        return cls(retriever, corpus, backend=backend)

    def warm_up(self) -> float:
        """Compile the numba scorer now (one query of the corpus's first word), not at the first
        request. -> seconds taken (0 with numpy)."""
        if self.backend != "numba" or not self.retriever.vocab_dict:
            return 0.0
        import time
        t0 = time.perf_counter()
        word = next(iter(self.retriever.vocab_dict))
        self.retriever.retrieve([[word]], k=1, show_progress=False, n_threads=1)
        return time.perf_counter() - t0

    def _search_rows(self, queries, k):
        tokens = _tokenize(queries, return_ids=False)
        # A query whose every token is a stopword or unseen ("the", "?!?!") matches nothing: it gets
        # no passages (rows -1), as pyserini's BM25 in Search-R1 returns no hits, and is counted in
        # `empty_queries`. The first k corpus rows at score 0 would be noise posing as evidence.
        vocab = self.retriever.vocab_dict
        known = [[t for t in q if t in vocab] for q in tokens]
        scores = np.zeros((len(queries), k), np.float32)
        rows = np.full((len(queries), k), -1, np.int64)
        live = [i for i, q in enumerate(known) if q]
        self.empty_queries += len(queries) - len(live)
        if live:
            # the same tokens twice in one batch (GRPO siblings often send the same query) are
            # scored once: bm25s scores every passage of the corpus per query
            first: dict[tuple, int] = {}
            slot = [first.setdefault(tuple(sorted(known[i])), len(first)) for i in live]
            unique = [list(key) for key in first]
            r, s = self.retriever.retrieve(unique, k=k, show_progress=False, n_threads=1)
            rows[live], scores[live] = np.asarray(r, np.int64)[slot], np.asarray(s, np.float32)[slot]
            # fewer than k passages hold a query word: bm25s fills the top k with score-0 rows;
            # pyserini (Search-R1) returns only the hits
            rows[scores <= 0] = -1
        return scores, rows

    def save(self, directory: str) -> None:
        self.retriever.save(os.path.join(directory, BM25_DIR), show_progress=False)

    @classmethod
    def load(cls, directory: str, corpus: Corpus, *, backend: str = "numpy") -> "BM25Index":
        import bm25s

        sub = os.path.join(directory, BM25_DIR)
        if not os.path.isdir(sub):
            raise FileNotFoundError(f"{sub} missing: {directory} is not a complete BM25 index")
        return cls(bm25s.BM25.load(sub, show_progress=False), corpus, backend=backend)
