"""Server + client on 127.0.0.1 (port 0), BM25 over 300 real passages (fast, deterministic)."""
import json
import threading
import urllib.error
import urllib.request

import pytest

from searche1_jax.retrieval.bm25 import BM25Index
from searche1_jax.retrieval.client import RetrievalClient, RetrieverDownError
from searche1_jax.retrieval.corpus import Corpus
from searche1_jax.retrieval.serve import make_server

QUERIES = ["Evan Morris lobbyist", "Horatio Hale ethnologist", "a fort in Oman", "Genentech Roche"]


@pytest.fixture(scope="module")
def served(small_corpus_path):
    corpus = Corpus(small_corpus_path)
    index = BM25Index.build(corpus)
    server, batcher = make_server(index, "127.0.0.1", 0, max_wait_ms=20.0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    yield index, corpus, url, batcher
    server.shutdown()
    server.server_close()
    batcher.close()
    thread.join(timeout=5)


def post(url, body: bytes):
    req = urllib.request.Request(url + "/retrieve", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_client_equals_in_process_search(served):
    index, _, url, _ = served
    assert RetrievalClient(url).search(QUERIES, 3) == index.search(QUERIES, 3)


def test_wire_format_is_search_r1s_exactly(served):
    index, corpus, url, _ = served
    status, body = post(url, json.dumps({"queries": QUERIES[:2], "topk": 2, "return_scores": True}).encode())
    assert status == 200 and list(body) == ["result"] and len(body["result"]) == 2
    expected = index.search(QUERIES[:2], 2)
    for row, want in zip(body["result"], expected):
        assert len(row) == 2
        for item, p in zip(row, want):
            assert set(item) == {"document", "score"} and set(item["document"]) == {"id", "contents"}
            row_idx = [corpus.record(i)[0] for i in range(len(corpus))].index(item["document"]["id"])
            # the document is the corpus row, byte for byte
            assert (item["document"]["id"], item["document"]["contents"]) == corpus.record(row_idx)
            assert item["score"] == pytest.approx(p.score)
    # return_scores false (Search-R1's default): bare documents
    status, body = post(url, json.dumps({"queries": QUERIES[:1], "topk": 2}).encode())
    assert status == 200
    assert body == {"result": [[{"id": p.id, "contents": p.contents} for p in expected[0]]]}
    # no topk: the server default (3)
    status, body = post(url, json.dumps({"queries": QUERIES[:1]}).encode())
    assert len(body["result"][0]) == 3


def test_bad_requests_get_400_and_the_server_stays_up(served):
    _, _, url, _ = served
    for body, msg in [(b"{not json", "malformed JSON"), (b'{"queries": [""]}', "empty"),
                      (b'{"queries": ["a"], "topk": 0}', "topk must be >= 1"),
                      (b'{"queries": ["a"], "topk": 301}', "exceeds the 300 passages"),
                      (b'{"topk": 3}', "body must be a JSON object"),
                      (b'{"queries": "a"}', "list of strings")]:
        status, out = post(url, body)
        assert status == 400 and msg in out["error"], (body, out)
    with urllib.request.urlopen(url + "/health", timeout=10) as r:
        health = json.loads(r.read())
    assert (health["status"], health["kind"], health["num_passages"]) == ("ok", "bm25", 300)
    with pytest.raises(ValueError, match="HTTP 400.*empty"):
        RetrievalClient(url).search([""], 3)


def test_concurrent_requests_are_batched(served):
    index, _, url, batcher = served
    before = batcher.batches_run
    client = RetrievalClient(url)
    results = [None] * 8
    barrier = threading.Barrier(8)

    def work(i):
        barrier.wait(timeout=10)
        results[i] = client.search([QUERIES[i % 4]], 1 + i % 3)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert all(results[i] == index.search([QUERIES[i % 4]], 1 + i % 3) for i in range(8))
    assert batcher.batches_run - before < 8  # at least two requests shared one search


def test_client_reports_a_down_server_after_retries():
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = RetrievalClient(f"http://127.0.0.1:{port}", timeout=2, retries=2, backoff=0.01)
    with pytest.raises(RetrieverDownError, match=rf"retriever at http://127.0.0.1:{port} is down: .*3 attempts.*"
                                                 rf"python -m searche1_jax.retrieval.serve --index DIR --port {port}"):
        client.search(["q"], 3)
