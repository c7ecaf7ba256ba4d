"""Encode a whole corpus into resumable shards: `<dir>/shard_00000.npy` ([<=shard_size, d] f32).

A 21M-passage corpus is built in bounded memory (issue 22): `encode_shards` holds one shard at a
time, `sample_rows` draws ScaNN's training sample from the shards, and
`ScannIndex.build_streamed` adds the shards one by one.

Each shard is written atomically (tmp + rename) once complete, so an interrupted run restarts
at the first missing shard. A `shards.json` records the encoder and shard size; resuming with a
different encoder or shard size is refused instead of silently mixing vectors.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from searche1_jax.retrieval.corpus import Corpus
from searche1_jax.shapes import ceil_div

META = "shards.json"


def _shard_path(directory: str, i: int) -> str:
    return os.path.join(directory, f"shard_{i:05d}.npy")


def encode_shards(encoder, corpus: Corpus, directory: str, *, shard_size: int = 8192,
                  progress: bool = True) -> list[str]:
    """Encode every corpus row into `<directory>/shard_XXXXX.npy` (missing shards only) and return
    the shard paths in row order. Holds one shard's texts and vectors at a time: the corpus is read
    row range by row range through its byte offsets, never loaded whole."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    os.makedirs(directory, exist_ok=True)
    meta = {"encoder": encoder.describe(), "shard_size": shard_size, "num_passages": len(corpus),
            "corpus": corpus.path}
    meta_path = os.path.join(directory, META)
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            old = json.load(f)
        if old != meta:
            raise ValueError(f"{directory} holds shards from another run ({old}); this run is {meta}. "
                             f"Use a fresh directory or delete it.")
    else:
        with open(meta_path, "w") as f:
            json.dump(meta, f, indent=1)
    n = len(corpus)
    num_shards = ceil_div(n, shard_size)
    start, done = time.time(), 0
    for i in range(num_shards):
        path = _shard_path(directory, i)
        rows = range(i * shard_size, min(n, (i + 1) * shard_size))
        if not os.path.exists(path):
            emb = encoder.encode_passages(corpus.texts(rows))
            tmp = path + ".tmp.npy"
            np.save(tmp, emb)
            os.replace(tmp, path)
            done += len(rows)
            del emb
        if progress:
            rate = done / max(time.time() - start, 1e-9)
            print(f"\rencoding {corpus.path}: shard {i + 1}/{num_shards}, {rows.stop}/{n} passages, "
                  f"{rate:.0f} passages/s", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return [_shard_path(directory, i) for i in range(num_shards)]


def encode_corpus(encoder, corpus: Corpus, directory: str, *, shard_size: int = 8192,
                  progress: bool = True) -> np.ndarray:
    """Passage embeddings [N, d] f32 of every corpus row, from shards (computing missing ones).
    All N vectors in memory: for a large corpus use `encode_shards` + `sample_rows` instead."""
    paths = encode_shards(encoder, corpus, directory, shard_size=shard_size, progress=progress)
    return np.concatenate([np.load(p) for p in paths])


def sample_rows(paths: list[str], size: int, seed: int = 0) -> np.ndarray:
    """[min(size, N), d] f32: rows drawn uniformly without replacement across the shards, read
    through memory maps (only the sampled rows are copied)."""
    sizes = [np.load(p, mmap_mode="r").shape[0] for p in paths]
    total = sum(sizes)
    pick = np.sort(np.random.default_rng(seed).choice(total, min(size, total), replace=False))
    out, start = [], 0
    for p, m in zip(paths, sizes):
        local = pick[(pick >= start) & (pick < start + m)] - start
        if len(local):
            out.append(np.asarray(np.load(p, mmap_mode="r")[local], np.float32))
        start += m
    return np.concatenate(out)
