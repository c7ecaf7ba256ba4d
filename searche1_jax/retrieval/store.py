"""`build_index` / `load_index`: an index directory is its files plus `manifest.json`.

    manifest.json = {"format": 1, "kind": "exact" | "scann" | "bm25", "corpus": "/abs/wiki.jsonl",
                     "num_passages": N, "encoder": {"path", "dim", "query_prefix",
                     "passage_prefix", "max_length"} | null, "params": {...}}

`load_index(dir)` reads the manifest, opens the corpus, loads the encoder it names (unless one
is passed) and dispatches on `kind`.
"""
from __future__ import annotations

import json
import os

import numpy as np

from searche1_jax.retrieval.corpus import Corpus
from searche1_jax.retrieval.index import Index

MANIFEST = "manifest.json"
KINDS = ("exact", "scann", "bm25")
CORPUS_OFFSETS = "corpus.offsets.npy"


def build_index(out_dir: str, *, kind: str, corpus: Corpus, encoder=None, encoder_path: str | None = None,
                embeddings: np.ndarray | None = None, shards_dir: str | None = None,
                scann_params: dict | None = None, progress: bool = True, shard_size: int = 8192) -> Index:
    """Build, save and return an index. Dense kinds take `embeddings` (e.g. from a faiss file)
    or compute them with `encoder` into resumable shards (`shards_dir`, default out_dir/shards)."""
    if kind not in KINDS:
        raise ValueError(f"index kind must be one of {KINDS}, got {kind!r}")
    os.makedirs(out_dir, exist_ok=True)
    enc_meta, params = None, {}
    if kind == "bm25":
        from searche1_jax.retrieval.bm25 import BM25Index
        index = BM25Index.build(corpus)
    else:
        if embeddings is None and encoder is None:
            raise ValueError(f"a {kind} index needs an encoder (or precomputed embeddings)")
        if embeddings is None and kind == "scann":  # bounded memory: one shard at a time (issue 22)
            index = _scann_streamed(corpus, encoder, shards_dir or os.path.join(out_dir, "shards"),
                                    scann_params or {}, shard_size, progress)
        elif embeddings is None:
            from searche1_jax.retrieval.embed import encode_corpus
            embeddings = encode_corpus(encoder, corpus, shards_dir or os.path.join(out_dir, "shards"),
                                       shard_size=shard_size, progress=progress)
        if embeddings is not None and len(embeddings) != len(corpus):
            raise ValueError(f"{len(embeddings)} embeddings for a corpus of {len(corpus)} passages")
        if encoder is not None:
            enc_meta = {**encoder.describe(), "path": os.path.abspath(encoder_path) if encoder_path else None}
        if kind == "exact":
            from searche1_jax.retrieval.exact import ExactIndex
            index = ExactIndex(embeddings, corpus, encoder)
        elif embeddings is None:
            params = index.params
        else:
            from searche1_jax.retrieval.scann_index import ScannIndex
            index = ScannIndex.build(embeddings, corpus, encoder, **(scann_params or {}))
            params = index.params
    index.save(out_dir)
    # The corpus offsets travel with the index, so opening it never writes beside the corpus.
    np.save(os.path.join(out_dir, CORPUS_OFFSETS), corpus.offsets)
    manifest = {"format": 1, "kind": kind, "corpus": corpus.path, "num_passages": len(corpus),
                "encoder": enc_meta, "params": params}
    tmp = os.path.join(out_dir, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, os.path.join(out_dir, MANIFEST))
    return index


def _scann_streamed(corpus, encoder, shards_dir: str, params: dict, shard_size: int, progress: bool):
    """Encode into resumable shards, train ScaNN on a sample of them, add them one at a time."""
    from searche1_jax.retrieval.embed import encode_shards, sample_rows
    from searche1_jax.retrieval.scann_index import ScannIndex, default_params

    paths = encode_shards(encoder, corpus, shards_dir, shard_size=shard_size, progress=progress)
    size = params.get("training_sample_size", default_params(len(corpus))["training_sample_size"])
    sample = sample_rows(paths, size)
    shards = (np.load(p, mmap_mode="r") for p in paths)
    return ScannIndex.build_streamed(shards, sample, len(corpus), corpus, encoder, progress=progress,
                                     **{k: v for k, v in params.items() if k != "training_sample_size"})


def read_manifest(directory: str) -> dict:
    path = os.path.join(directory, MANIFEST)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"index directory {directory!r} does not exist; build one with "
                                f"python -m searche1_jax.retrieval.build --corpus FILE --encoder DIR|bm25 "
                                f"--index scann|exact|bm25 --out {directory}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} missing: {directory!r} is not an index directory (or its build "
                                f"did not finish)")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is corrupt (not JSON: {e.msg}); rebuild the index") from None
    if manifest.get("kind") not in KINDS:
        raise ValueError(f"{path}: unknown index kind {manifest.get('kind')!r}; expected one of {KINDS}")
    return manifest


def load_index(directory: str, *, encoder=None, corpus: Corpus | None = None, bm25_backend: str = "numpy") -> Index:
    """Open a built index; `encoder`/`corpus` override what the manifest names; `bm25_backend`:
    a BM25 index's scorer (bm25.py: numpy | numba | auto)."""
    m = read_manifest(directory)
    corpus = corpus or Corpus(m["corpus"], offsets_file=os.path.join(directory, CORPUS_OFFSETS))
    if len(corpus) != m["num_passages"]:
        raise ValueError(f"corpus {corpus.path} has {len(corpus)} passages; the index at {directory} "
                         f"was built on {m['num_passages']}")
    if m["kind"] == "bm25":
        from searche1_jax.retrieval.bm25 import BM25Index
        return BM25Index.load(directory, corpus, backend=bm25_backend)
    if encoder is None and m.get("encoder") and m["encoder"].get("path"):
        from searche1_jax.retrieval.encoder import Encoder
        e = m["encoder"]
        encoder = Encoder.from_pretrained(e["path"], prefixes=(e["query_prefix"], e["passage_prefix"]),
                                          max_length=e["max_length"])
    if m["kind"] == "exact":
        from searche1_jax.retrieval.exact import ExactIndex
        return ExactIndex.load(directory, corpus, encoder)
    from searche1_jax.retrieval.scann_index import ScannIndex
    return ScannIndex.load(directory, corpus, encoder)
