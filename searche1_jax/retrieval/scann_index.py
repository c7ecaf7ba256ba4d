"""ScaNN index: k-means tree partitioning + anisotropic hashing (AH) + exact reorder.

Why ScaNN: Search-R1's flat fp32 index of 21M x 768 is ~62 GB; AH codes are d/2 bytes per
vector at 4 bits per 2 dims (16x smaller), and the reorder step rescores the best candidates
exactly. Builds are reproducible: k-means++ init (`random_init=False`, see DEPS.md).
"""
from __future__ import annotations

import json
import os
import re
import sys

import numpy as np

from searche1_jax.retrieval.index import DenseIndex

SCANN_DIR = "scann"
_REORDER_TYPES = {"float32": "FLOAT32", "int8": "INT8", "bfloat16": "BFLOAT16"}


def _reorder_enum():
    from scann.scann_ops.py.scann_builder import ReorderType

    return ReorderType
PARAMS_FILE = "scann_params.json"


# Question-to-passage search needs more of the tree than ScaNN's usual 10% of the leaves and more
# AH candidates than 100: RESULTS "2026-12-05: ... (issue 22)", all-MiniLM-L6-v2 over the 24,537
# shared passages, 1,232 QA questions, tree + AH 4 dims/code + int8 reorder: recall@3 vs exact
# 0.859 / 0.926 / 0.944 / 0.949 / 0.951 at 10 / 25 / 40 / 60 / 100% of the leaves with 100
# candidates, answer-in-top-3 -1.38 pt vs exact at 10%; 200 candidates at 40%: 0.970, +0.00 pt,
# 7.7x exact QPS (questions sit farther from the passage clusters than passages from each other).
SEARCH_FRACTION = 0.4
REORDER_CANDIDATES = 200


PARALLEL_MIN_QUERIES = 32  # batches at least this big search on every core (search_batched_parallel)


def default_params(n: int) -> dict:
    """Leaves ~ sqrt(N) (ScaNN's guidance), search 40% of them, reorder 200 candidates exactly.

    `reorder: 0` keeps only the AH codes (d/2 bytes a vector, 1/8 of fp32); `reorder_dtype`
    "int8" / "bfloat16" stores the reorder copy at 1/4 / 1/2 of fp32 bytes.
    """
    leaves = max(1, min(int(np.sqrt(n)), n // 50 or 1))
    return {"num_leaves": leaves, "num_leaves_to_search": max(1, int(np.ceil(SEARCH_FRACTION * leaves))),
            "training_sample_size": min(n, 250_000), "dims_per_block": 2,
            "anisotropic_quantization_threshold": 0.2, "reorder": REORDER_CANDIDATES, "reorder_dtype": "float32"}


def _relocate_assets(sub: str) -> None:
    """ScaNN's scann_assets.pbtxt stores absolute asset paths; point them into `sub` so an index
    directory can be moved or copied to another machine."""
    path = os.path.join(sub, "scann_assets.pbtxt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} missing: not a complete ScaNN index")
    with open(path) as f:
        text = f.read()
    fixed = re.sub(r'asset_path: "([^"]*)"',
                   lambda m: f'asset_path: "{os.path.join(os.path.abspath(sub), os.path.basename(m.group(1)))}"', text)
    if fixed != text:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(fixed)
        os.replace(tmp, path)


class ScannIndex(DenseIndex):
    kind = "scann"

    def __init__(self, searcher, num_vectors: int, dim: int, params: dict, corpus=None, encoder=None):
        self.searcher, self._n, self.params = searcher, num_vectors, params
        super().__init__(corpus, encoder, dim)

    @property
    def num_passages(self) -> int:
        return self._n

    @classmethod
    def build(cls, embeddings: np.ndarray, corpus=None, encoder=None, **overrides) -> "ScannIndex":
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or len(emb) == 0:
            raise ValueError(f"embeddings must be a non-empty [N, d] array, got shape {list(emb.shape)}")
        params = cls._params(len(emb), overrides)
        return cls(cls._searcher(emb, params), len(emb), emb.shape[1], params, corpus, encoder)

    @classmethod
    def build_streamed(cls, shards, sample: np.ndarray, num_vectors: int, corpus=None, encoder=None,
                       progress: bool = False, **overrides) -> "ScannIndex":
        """Train the tree and the AH codebooks on `sample` [S, d], then add `shards` (an iterable
        of [m, d] arrays in corpus row order, e.g. memory-mapped shard files) one at a time: peak
        memory is the index plus one shard plus the sample, never all N fp32 vectors (issue 22).
        Searches return corpus rows: the sample's own points are removed before the shards go in."""
        sample = np.ascontiguousarray(sample, dtype=np.float32)
        if sample.ndim != 2 or len(sample) == 0:
            raise ValueError(f"sample must be a non-empty [S, d] array, got shape {list(sample.shape)}")
        params = cls._params(num_vectors, {**overrides, "training_sample_size": len(sample)})
        searcher = cls._searcher(sample, params)
        cpp = searcher.searcher
        cpp.delete(list(range(len(sample) - 1, -1, -1)))  # from the end: no index moves
        added = 0
        for shard in shards:
            x = np.ascontiguousarray(shard, dtype=np.float32)
            if x.ndim != 2 or x.shape[1] != sample.shape[1]:
                raise ValueError(f"shard {added}..: expected [m, {sample.shape[1]}] vectors, got {list(x.shape)}")
            cpp.upsert([None] * len(x), x, 4096)  # None: a new point, appended at index size()
            added += len(x)
            if progress:
                print(f"\rScaNN: added {added}/{num_vectors} vectors", end="", file=sys.stderr, flush=True)
        if progress:
            print(file=sys.stderr)
        if added != num_vectors or cpp.size() != num_vectors:
            raise ValueError(f"the shards held {added} vectors (index size {cpp.size()}), expected {num_vectors}")
        return cls(searcher, num_vectors, sample.shape[1], params, corpus, encoder)

    @staticmethod
    def _params(n: int, overrides: dict) -> dict:
        params = {**default_params(n), **overrides}
        unknown = set(params) - set(default_params(1))
        if unknown:
            raise ValueError(f"unknown ScaNN parameters {sorted(unknown)}; known: {sorted(default_params(1))}")
        return params

    @staticmethod
    def _searcher(emb: np.ndarray, params: dict):
        import scann

        builder = scann.scann_ops_pybind.builder(emb, 10, "dot_product")
        if params["num_leaves"] > 1:
            builder = builder.tree(num_leaves=params["num_leaves"],
                                   num_leaves_to_search=params["num_leaves_to_search"],
                                   training_sample_size=params["training_sample_size"],
                                   random_init=False)
        builder = builder.score_ah(params["dims_per_block"],
                                   anisotropic_quantization_threshold=params["anisotropic_quantization_threshold"])
        if params["reorder"] > 0:
            if params["reorder_dtype"] not in _REORDER_TYPES:
                raise ValueError(f"reorder_dtype must be one of {sorted(_REORDER_TYPES)}, "
                                 f"got {params['reorder_dtype']!r}")
            rt = getattr(_reorder_enum(), _REORDER_TYPES[params["reorder_dtype"]])
            builder = builder.reorder(params["reorder"], quantize=rt)
        return builder.build()

    def search_vectors(self, queries: np.ndarray, k: int,
                       leaves_to_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores [Q, k] f32, rows [Q, k] i64), best first (exact scores with a float32 reorder,
        approximate ones with int8/bfloat16 reorder or AH only)."""
        q = self._check_vectors(queries, k)
        kw = {"final_num_neighbors": int(k)}
        if self.params["reorder"] > 0:
            kw["pre_reorder_num_neighbors"] = max(int(k), self.params["reorder"])
        if leaves_to_search is not None:
            kw["leaves_to_search"] = leaves_to_search
        if len(q) >= PARALLEL_MIN_QUERIES:
            # ScaNN's threaded batch search (one sub-batch a thread; per-query results are the
            # serial ones). search_batched runs on one core while the exact index's matmul uses
            # them all.
            threads = max(1, os.cpu_count() or 1)
            rows, scores = self.searcher.search_batched_parallel(
                q, batch_size=int(min(256, max(16, -(-len(q) // threads)))), **kw)
        else:
            rows, scores = self.searcher.search_batched(q, **kw)
        return np.asarray(scores, np.float32), np.asarray(rows, np.int64)

    def save(self, directory: str) -> None:
        sub = os.path.join(directory, SCANN_DIR)
        os.makedirs(sub, exist_ok=True)
        self.searcher.serialize(sub)
        with open(os.path.join(directory, PARAMS_FILE), "w") as f:
            json.dump({"num_vectors": self._n, "dim": self.dim, "params": self.params}, f, indent=1)

    @classmethod
    def load(cls, directory: str, corpus=None, encoder=None) -> "ScannIndex":
        import scann

        sub, meta = os.path.join(directory, SCANN_DIR), os.path.join(directory, PARAMS_FILE)
        if not (os.path.isdir(sub) and os.path.exists(meta)):
            raise FileNotFoundError(f"{directory} is not a complete ScaNN index (needs {SCANN_DIR}/ and "
                                    f"{PARAMS_FILE}); rebuild it with python -m searche1_jax.retrieval.build")
        with open(meta) as f:
            m = json.load(f)
        _relocate_assets(sub)
        searcher = scann.scann_ops_pybind.load_searcher(sub)
        return cls(searcher, m["num_vectors"], m["dim"], m["params"], corpus, encoder)
