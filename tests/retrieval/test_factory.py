"""build_retriever: config.retrieval.kind selects the index for every kind, on 300 real passages."""
import types

import numpy as np
import pytest

from searche1_jax.retrieval.bm25 import BM25Index
from searche1_jax.retrieval.client import RetrievalClient
from searche1_jax.retrieval.corpus import Corpus
from searche1_jax.retrieval.exact import ExactIndex
from searche1_jax.retrieval.factory import build_retriever
from searche1_jax.retrieval.scann_index import ScannIndex
from searche1_jax.retrieval.store import build_index

QUERIES = ["Evan Morris lobbyist", "Horatio Hale ethnologist", "a fort in Oman"]


def section(kind, index="", corpus="", url=""):
    """A stand-in for config.retrieval (build_retriever reads attributes only)."""
    return types.SimpleNamespace(kind=kind, index=index, corpus=corpus, url=url, topk=3, timeout=30.0, deadline=60.0,
                                 max_queries=256, bm25_backend="numpy")


@pytest.fixture(scope="module")
def corpus(small_corpus_path):
    return Corpus(small_corpus_path)


@pytest.fixture(scope="module")
def embeddings():
    rng = np.random.default_rng(0)
    e = rng.standard_normal((300, 16)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def index_dirs(tmp_path_factory, corpus, embeddings):
    out = {}
    for kind in ("bm25", "exact", "scann"):
        d = tmp_path_factory.mktemp(kind)
        build_index(str(d), kind=kind, corpus=corpus, embeddings=None if kind == "bm25" else embeddings,
                    progress=False)
        out[kind] = str(d)
    return out


def ids(hits):
    return [[p.id for p in row] for row in hits]


def test_bm25_from_corpus_and_from_index_dir_search_like_a_fresh_bm25(small_corpus_path, corpus, index_dirs):
    want = ids(BM25Index.build(corpus).search(QUERIES, 3))
    from_corpus = build_retriever(section("bm25", corpus=small_corpus_path))
    from_dir = build_retriever(section("bm25", index=index_dirs["bm25"]))
    assert isinstance(from_corpus, BM25Index) and isinstance(from_dir, BM25Index)
    assert ids(from_corpus.search(QUERIES, 3)) == want == ids(from_dir.search(QUERIES, 3))


def test_exact_kind_loads_the_exact_index_and_searches_exactly(index_dirs, embeddings):
    index = build_retriever(section("exact", index=index_dirs["exact"]))
    assert isinstance(index, ExactIndex) and index.num_passages == 300
    q = embeddings[[3, 150, 299]] + 0.01
    _, rows = index.search_vectors(q, 3)
    np.testing.assert_array_equal(rows, np.argsort(-(q @ embeddings.T), axis=1)[:, :3])


def test_scann_kind_loads_the_scann_index(index_dirs):
    index = build_retriever(section("scann", index=index_dirs["scann"]))
    assert isinstance(index, ScannIndex) and index.num_passages == 300 and index.dim == 16


@pytest.mark.parametrize("kind,stored", [("scann", "exact"), ("exact", "scann"), ("exact", "bm25"),
                                         ("bm25", "exact")])
def test_an_index_of_another_kind_is_refused_naming_both_kinds(kind, stored, index_dirs):
    with pytest.raises(ValueError, match=f"holds a '{stored}' index but config.retrieval.kind is '{kind}'"):
        build_retriever(section(kind, index=index_dirs[stored]))


def test_http_kind_is_a_client_of_the_url():
    client = build_retriever(section("http", url="http://127.0.0.1:8000/retrieve"))
    assert isinstance(client, RetrievalClient) and client.url == "http://127.0.0.1:8000"


def test_missing_fields_name_the_field_and_the_fix(tmp_path):
    with pytest.raises(ValueError, match="kind='http' needs config.retrieval.url"):
        build_retriever(section("http"))
    with pytest.raises(ValueError, match=r"config.retrieval.url: retriever url must look like http://HOST:PORT"):
        build_retriever(section("http", url="127.0.0.1:8000"))
    with pytest.raises(ValueError, match="kind='bm25' needs config.retrieval.corpus .* or config.retrieval.index"):
        build_retriever(section("bm25"))
    for kind in ("exact", "scann"):
        with pytest.raises(ValueError, match=f"kind='{kind}' needs config.retrieval.index: .*--index {kind}"):
            build_retriever(section(kind))
    with pytest.raises(FileNotFoundError, match="config.retrieval.index: index directory .* does not exist"):
        build_retriever(section("scann", index=str(tmp_path / "nope")))
    with pytest.raises(ValueError, match="config.retrieval.kind must be one of"):
        build_retriever(section("faiss", index=str(tmp_path)))


# ---- issue 23 item 6: a retrieval service that is down is found when the run starts ----

def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_check_service_names_the_url_and_how_to_start_one_when_nothing_answers():
    from searche1_jax.retrieval.client import RetrieverDownError
    from searche1_jax.retrieval.factory import check_service
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RetrieverDownError, match=rf"retriever at {url} is down: .*start it with "
                                                 r"python -m searche1_jax.retrieval.serve --index DIR"):
        check_service(section("http", url=url), retries=0)


def test_check_service_reads_health_and_checks_the_corpus_size(small_corpus_path):
    import threading

    from searche1_jax.retrieval.factory import check_service
    from searche1_jax.retrieval.serve import make_server
    corpus = Corpus(small_corpus_path)
    server, batcher = make_server(BM25Index.build(corpus), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        r = section("http", url=f"http://127.0.0.1:{server.server_address[1]}")
        health = check_service(r, num_passages=len(corpus))
        assert (health["status"], health["kind"], health["num_passages"]) == ("ok", "bm25", len(corpus))
        with pytest.raises(ValueError, match=rf"serves {len(corpus)} passages, this run expects 7"):
            check_service(r, num_passages=7)
    finally:
        server.shutdown()
        server.server_close()
        batcher.close()
