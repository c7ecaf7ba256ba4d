"""Bounded-memory ScaNN build (issue 22, item 2): shards encoded resumably, ScaNN trained on a
sample and filled shard by shard. Oracles: numpy exact inner-product search, the encoder's call
count, and the peak RSS of a child process against the bytes all vectors and strings would take."""
import json
import os
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

from searche1_jax.retrieval.corpus import Corpus
from searche1_jax.retrieval.scann_index import ScannIndex

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class HashEncoder:
    """A stand-in passage encoder: a unit vector seeded by each text's crc32 (deterministic)."""

    def __init__(self, dim: int = 16, fail_after: int | None = None):
        self.dim, self.calls, self.fail_after = dim, 0, fail_after

    def describe(self):
        return {"name": "hash", "dim": self.dim, "query_prefix": "", "passage_prefix": "", "max_length": 0}

    def encode_passages(self, texts):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("interrupted (test)")
        self.calls += 1
        x = np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=self.dim) for t in texts])
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    encode_queries = encode_passages


def mixture(n, d, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(50, d))
    x = c[rng.integers(0, 50, n)] + 0.5 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_streamed_scann_finds_what_numpy_finds_and_returns_corpus_rows():
    x = mixture(6000, 32)
    sample = x[np.random.default_rng(1).choice(6000, 1500, replace=False)]
    idx = ScannIndex.build_streamed((x[i:i + 2000] for i in range(0, 6000, 2000)), sample, 6000,
                                    num_leaves=40, num_leaves_to_search=40, reorder_dtype="float32")
    assert idx.searcher.searcher.size() == 6000 and idx.params["training_sample_size"] == 1500
    q = x[::60] + 0.05 * np.random.default_rng(2).normal(size=(100, 32)).astype(np.float32)
    _, rows = idx.search_vectors(q, 10)
    want = np.argsort(-(q @ x.T), axis=1)[:, :10]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, want)]) >= 0.95
    _, own = idx.search_vectors(x[[0, 2999, 5999]], 1)  # a stored vector finds its own corpus row
    assert own[:, 0].tolist() == [0, 2999, 5999]
    with pytest.raises(ValueError, match="held 2000 vectors .* expected 6000"):
        ScannIndex.build_streamed([x[:2000]], sample, 6000, num_leaves=40)


def test_build_index_streams_shards_and_resumes_after_an_interruption(small_corpus_path, tmp_path):
    from searche1_jax.retrieval.exact import ExactIndex
    from searche1_jax.retrieval.store import build_index, load_index

    corpus = Corpus(small_corpus_path)
    out, shards = str(tmp_path / "idx"), str(tmp_path / "shards")
    kw = dict(kind="scann", corpus=corpus, shards_dir=shards, shard_size=64, progress=False,
              scann_params={"num_leaves": 8, "num_leaves_to_search": 8, "reorder_dtype": "float32"})
    first = HashEncoder(fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        build_index(out, encoder=first, **kw)
    assert sorted(os.listdir(shards)) == ["shard_00000.npy", "shard_00001.npy", "shards.json"]
    second = HashEncoder()
    build_index(out, encoder=second, **kw)
    assert second.calls == 3  # 300 rows / 64 = 5 shards, 2 already on disk
    vecs = HashEncoder().encode_passages(corpus.texts(range(len(corpus))))
    queries = ["Evan Morris", "a fort in Oman", "Horatio Hale"]
    got = load_index(out, encoder=HashEncoder()).search(queries, 5)
    want = ExactIndex(vecs, corpus, HashEncoder()).search(queries, 5)
    assert [[p.id for p in r] for r in got] == [[p.id for p in r] for r in want]


CHILD = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
    from test_stream_build import HashEncoder
    from searche1_jax.retrieval.corpus import Corpus
    from searche1_jax.retrieval.store import build_index
    n, shard, d, tmp = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    path = os.path.join(tmp, "corpus.jsonl")
    with open(path, "w") as f:  # written line by line, never held
        for i in range(n):
            f.write(json.dumps({{"id": str(i), "contents": f'"Title {{i}}"\\nsynthetic passage number {{i}}'}}) + "\\n")
    corpus = Corpus(path)
    import scann  # noqa: F401  (imports before the baseline)

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS: the peak below is the build's alone
    base = status("VmRSS:")
    build_index(os.path.join(tmp, "idx"), kind="scann", corpus=corpus, encoder=HashEncoder({d}),
                shard_size=shard, progress=False,
                scann_params={{"training_sample_size": 4000, "num_leaves": 64, "num_leaves_to_search": 8,
                               "reorder_dtype": "int8"}})
    peak = status("VmHWM:")
    index = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(os.path.join(tmp, "idx", "scann"))
                for f in fs)  # the searcher (not the fp32 shards beside it)
    print(json.dumps({{"growth": peak - base, "text_bytes": os.path.getsize(path), "index_bytes": index}}))
""")


@pytest.mark.slow
def test_peak_memory_grows_with_the_shard_size_not_the_corpus(tmp_path):
    d = 256
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(root=ROOT, tests=os.path.dirname(__file__), d=d))

    def growth(n, shard):
        work = tmp_path / f"{n}_{shard}"
        work.mkdir()
        r = subprocess.run([sys.executable, str(script), str(n), str(shard), str(d), str(work)],
                           capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(r.stdout.strip().splitlines()[-1])

    small, big = growth(40_000, 2_000), growth(40_000, 20_000)
    double = growth(80_000, 2_000)
    # 18k more rows a shard: their fp32 vectors (18k x d x 4 = 18 MB) are held at once
    assert big["growth"] - small["growth"] > 0.5 * 18_000 * d * 4
    # 40k more passages: all their fp32 vectors and strings would take 41 MB + text; the build
    # grows by the index only (int8 copy + AH codes + ids: ~0.4 of the fp32 bytes)
    all_of_them = 40_000 * d * 4 + (double["text_bytes"] - small["text_bytes"])
    assert double["growth"] - small["growth"] < 0.6 * all_of_them
    # what the build holds besides the index itself (shard, sample, buffers) does not grow with it
    extra = lambda r: r["growth"] - r["index_bytes"]  # noqa: E731
    assert abs(extra(double) - extra(small)) < 0.25 * 40_000 * d * 4, (small, double)
    print(json.dumps({"40k/2k": small, "40k/20k": big, "80k/2k": double}))  # for RESULTS.md
