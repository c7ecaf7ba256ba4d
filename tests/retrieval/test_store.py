"""build_index -> load_index for every kind, on real passages with a tiny random BERT encoder."""
import json
import os

import numpy as np
import pytest

from searche1_jax.retrieval.corpus import Corpus
from searche1_jax.retrieval.exact import ExactIndex
from searche1_jax.retrieval.store import build_index, load_index

QUERIES = ["Evan Morris lobbyist", "Horatio Hale ethnologist", "a fort in Oman"]


@pytest.fixture(scope="module")
def corpus(small_corpus_path):
    return Corpus(small_corpus_path)


@pytest.mark.parametrize("kind", ["exact", "scann", "bm25"])
def test_build_then_load_gives_identical_results(kind, corpus, tiny_encoder, tiny_bert_dir, tmp_path):
    enc = None if kind == "bm25" else tiny_encoder
    built = build_index(str(tmp_path), kind=kind, corpus=corpus, encoder=enc,
                        encoder_path=None if enc is None else tiny_bert_dir, progress=False)
    manifest = json.load(open(tmp_path / "manifest.json"))
    assert manifest["kind"] == kind and manifest["num_passages"] == 300
    loaded = load_index(str(tmp_path))  # loads the encoder named by the manifest
    a, b = built.search(QUERIES, 5), loaded.search(QUERIES, 5)
    assert [[p.id for p in r] for r in a] == [[p.id for p in r] for r in b]
    for ra, rb in zip(a, b):
        np.testing.assert_allclose([p.score for p in ra], [p.score for p in rb], atol=1e-6)
    if kind == "bm25":  # only passages holding a query word: 300 passages have fewer than 5 for some
        assert all(1 <= len(r) <= 5 and min(p.score for p in r) > 0 for r in a)
    else:
        assert all(len(r) == 5 for r in a)


def test_dense_search_equals_encoder_plus_numpy(corpus, tiny_encoder):
    emb = tiny_encoder.encode_passages(corpus.texts(range(len(corpus))))
    idx = ExactIndex(emb, corpus, tiny_encoder)
    hits = idx.search(QUERIES, 3)
    q = tiny_encoder.encode_queries(QUERIES)
    want = np.argsort(-(q @ emb.T), axis=1)[:, :3]
    for row, w in zip(hits, want):
        assert [p.id for p in row] == [corpus.passage(int(i))[0] for i in w]
        assert row[0].title == corpus.passage(int(w[0]))[1]


def test_missing_or_corrupt_index_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; build one with python -m"):
        load_index(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="manifest.json missing"):
        load_index(str(tmp_path))
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        load_index(str(tmp_path))


def test_index_files_missing_behind_a_valid_manifest(corpus, tmp_path, small_corpus_path):
    build_index(str(tmp_path), kind="exact", corpus=corpus, embeddings=np.eye(300, 8, dtype=np.float32))
    os.remove(tmp_path / "embeddings.npy")
    with pytest.raises(FileNotFoundError, match="not a complete exact index"):
        load_index(str(tmp_path))


def test_encoder_index_dimension_mismatch(corpus, tiny_encoder):
    with pytest.raises(ValueError, match="makes 32-d vectors but this index holds 8-d"):
        ExactIndex(np.eye(300, 8, dtype=np.float32), corpus, tiny_encoder)


def test_corpus_index_size_mismatch(corpus):
    with pytest.raises(ValueError, match="300 passages but the index holds 10"):
        ExactIndex(np.eye(10, 8, dtype=np.float32), corpus)
