"""Server + client on 127.0.0.1 (port 0), BM25 over 300 real passages (fast, deterministic)."""
import json
import logging
import socket
import struct
import threading
import time
import urllib.error
import urllib.request

import pytest

from searche1_jax.retrieval.bm25 import BM25Index
from searche1_jax.retrieval.client import RetrievalClient, RetrieverDownError
from searche1_jax.retrieval.corpus import Corpus
from searche1_jax.retrieval.serve import Limits, make_server

QUERIES = ["Evan Morris lobbyist", "Horatio Hale ethnologist", "a fort in Oman", "Genentech Roche"]
FULL = ["American film director", "a fort in Oman"]  # >= 4 passages of the 300 hold a word of each


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
    status, body = post(url, json.dumps({"queries": FULL, "topk": 2, "return_scores": True}).encode())
    assert status == 200 and list(body) == ["result"] and len(body["result"]) == 2
    expected = index.search(FULL, 2)
    for row, want in zip(body["result"], expected):
        assert len(row) == 2
        for item, p in zip(row, want):
            assert set(item) == {"document", "score"} and set(item["document"]) == {"id", "contents"}
            row_idx = [corpus.record(i)[0] for i in range(len(corpus))].index(item["document"]["id"])
            # the document is the corpus row, byte for byte
            assert (item["document"]["id"], item["document"]["contents"]) == corpus.record(row_idx)
            assert item["score"] == pytest.approx(p.score)
    # return_scores false (Search-R1's default): bare documents
    status, body = post(url, json.dumps({"queries": FULL[:1], "topk": 2}).encode())
    assert status == 200
    assert body == {"result": [[{"id": p.id, "contents": p.contents} for p in expected[0]]]}
    # no topk: the server default (3)
    status, body = post(url, json.dumps({"queries": FULL[:1]}).encode())
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


# --- issue 23: limits, slow clients, methods, logs (a second server with small limits) ---------

STRICT = Limits(max_topk=5, max_queries=8, max_body_bytes=4096, max_connections=64, read_timeout=0.5)


@pytest.fixture(scope="module")
def strict(served):
    index = served[0]
    server, batcher = make_server(index, "127.0.0.1", 0, max_wait_ms=1.0, limits=STRICT)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    batcher.close()
    thread.join(timeout=5)


def raw(server, data: bytes, *, wait: float = 3.0) -> bytes:
    """Send `data` on a fresh connection and read until the server closes it (or `wait` s)."""
    with socket.create_connection(server.server_address, timeout=wait) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except TimeoutError:
            out += b"<still open>"
        return out


def reply(server, data: bytes) -> tuple[int, dict]:
    head, _, body = raw(server, data).partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_limits_answer_413_or_400_naming_the_limit(strict):
    server, url = strict
    status, out = post(url, json.dumps({"queries": QUERIES[:1], "topk": 6}).encode())
    assert status == 400 and "--max-topk 5" in out["error"]
    status, out = post(url, json.dumps({"queries": ["q"] * 9, "topk": 1}).encode())
    assert status == 413 and "9 queries exceed this server's --max-queries 8" in out["error"]
    # a huge Content-Length is refused before a byte of the body is read
    t = time.monotonic()
    status, out = reply(server, b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n")
    assert status == 413 and "--max-body-bytes 4096" in out["error"] and time.monotonic() - t < 1
    status, out = post(url, json.dumps({"queries": ["q"] * 8, "topk": 5}).encode())
    assert status == 200 and len(out["result"]) == 8


def test_default_limits_refuse_the_issues_huge_reply(served):
    _, _, url, _ = served
    status, out = post(url, json.dumps({"queries": QUERIES * 5, "topk": 300}).encode())
    assert status == 400 and f"--max-topk {Limits().max_topk}" in out["error"]


@pytest.mark.parametrize("head", [
    b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"queries\"",  # body shorter
    b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Le",                                # headers stall
    b"",                                                                              # idle connection
])
def test_slow_or_short_requests_are_closed_after_the_read_timeout(strict, head):
    server, _ = strict
    t = time.monotonic()
    out = raw(server, head, wait=5.0)
    assert out == b"" and 0.4 < time.monotonic() - t < 2.0  # closed by the server, not left open


def test_slow_loris_trickle_is_closed_and_many_are_all_closed(strict):
    server, _ = strict
    s = socket.create_connection(server.server_address, timeout=3)
    t, closed = time.monotonic(), False
    try:
        for ch in b"POST /retrieve HTTP/1.1\r\nHost: x\r\n" * 10:  # one byte each 20 ms: 14 s if let run
            s.send(bytes([ch]))
            time.sleep(0.02)
    except OSError:
        closed = True
    finally:
        s.close()
    assert closed and time.monotonic() - t < 2.0
    socks = [socket.create_connection(server.server_address, timeout=3) for _ in range(30)]
    for s in socks:
        s.sendall(b"POST /retrieve HTTP/1.1\r\nContent-Length: 10\r\n\r\n{")
    try:
        assert all(s.recv(1) == b"" for s in socks)  # each closed within the read timeout
    finally:
        for s in socks:
            s.close()
    deadline = time.monotonic() + 3
    while server._conns and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not server._conns


@pytest.mark.parametrize("length", [b"-1", b"ten"])
def test_bad_content_length_is_answered_400(strict, length):
    server, _ = strict
    status, out = reply(server, b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n")
    assert status == 400 and "Content-Length must be a byte count >= 0" in out["error"]
    status, out = reply(server, b"POST /retrieve HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 411 and "Content-Length" in out["error"]


@pytest.mark.parametrize("method,path,code,allow", [
    ("GET", "/retrieve", 405, "POST"), ("PUT", "/retrieve", 405, "POST"), ("DELETE", "/retrieve", 405, "POST"),
    ("POST", "/health", 405, "GET"), ("GET", "/nowhere", 404, None), ("FOO", "/retrieve", 501, None),
])
def test_every_method_gets_a_json_error(strict, method, path, code, allow):
    server, _ = strict
    data = raw(server, f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
    head, _, body = data.partition(b"\r\n\r\n")
    assert int(head.split()[1]) == code and b"application/json" in head
    assert "error" in json.loads(body[:int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])])
    if allow:
        assert f"Allow: {allow}".encode() in head


def test_an_aborted_connection_is_one_log_line_not_a_traceback(strict, caplog, capfd):
    server, url = strict
    caplog.set_level(logging.WARNING, logger="searche1_jax.retrieval.serve")
    s = socket.create_connection(server.server_address, timeout=3)
    s.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Len")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    s.close()
    deadline = time.monotonic() + 3
    while not caplog.records and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "ConnectionResetError" in lines[0], lines
    assert "Traceback" not in capfd.readouterr().err


def test_queries_without_an_indexable_word_get_no_passages_and_are_counted(strict):
    server, url = strict
    before = json.loads(urllib.request.urlopen(url + "/health", timeout=10).read())["empty_queries"]
    status, out = post(url, json.dumps({"queries": ["?!?!", FULL[0], "the"], "topk": 3}).encode())
    assert status == 200 and [len(r) for r in out["result"]] == [0, 3, 0]
    after = json.loads(urllib.request.urlopen(url + "/health", timeout=10).read())["empty_queries"]
    assert after - before == 2
    assert RetrievalClient(url).search(["the"], 3) == [[]]


def test_listen_backlog_holds_a_burst_of_connections(served):
    """64 connections at once while nothing accepts: all wait in the backlog (128), none dropped;
    the stdlib's backlog of 5 drops some (the old resets under load)."""
    index = served[0]
    for backlog, all_in in [(128, True), (5, False)]:
        server, batcher = make_server(index, "127.0.0.1", 0, limits=Limits(backlog=backlog))
        socks, dropped = [], 0
        try:
            for _ in range(64):
                try:
                    socks.append(socket.create_connection(server.server_address, timeout=0.3))
                except OSError:
                    dropped += 1
                    break
        finally:
            for s in socks:
                s.close()
            server.server_close()
            batcher.close()
        assert (dropped == 0) == all_in, (backlog, dropped)


def test_client_splits_batches_over_the_servers_query_limit(strict, served):
    index = served[0]
    _, url = strict
    queries = (QUERIES * 3)[:10]  # more than STRICT.max_queries (8)
    assert RetrievalClient(url, max_queries=4).search(queries, 2) == index.search(queries, 2)
    with pytest.raises(ValueError, match="--max-queries 8"):
        RetrievalClient(url, max_queries=100).search(queries, 2)
    with pytest.raises(ValueError, match="--max-topk 5"):
        RetrievalClient(url).search(queries[:1], 6)


def test_connections_over_the_cap_get_503_and_the_rest_are_served(served):
    index = served[0]
    server, batcher = make_server(index, "127.0.0.1", 0, limits=Limits(max_connections=2, read_timeout=1.0))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    idle = [socket.create_connection(server.server_address, timeout=3) for _ in range(2)]
    try:
        time.sleep(0.2)  # both accepted and registered
        status, out = reply(server, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 503 and "--max-connections" in out["error"]
    finally:
        for s in idle:
            s.close()
    time.sleep(0.2)
    status, out = reply(server, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 200 and out["limits"]["max_connections"] == 2
    server.shutdown()
    server.server_close()
    batcher.close()
    thread.join(timeout=5)


def test_client_sub_batches_in_parallel_keep_query_order(served):
    index, _, url, batcher = served
    queries = QUERIES * 3 + ["Genentech"]  # 13 queries -> 7 requests of <= 2, 3 in flight
    before = batcher.batches_run
    client = RetrievalClient(url, max_queries=2, parallel=3)
    assert client.search(queries, 3) == index.search(queries, 3)
    assert batcher.batches_run > before
    with pytest.raises(ValueError, match="parallel >= 1"):
        RetrievalClient(url, parallel=0)


def test_dense_server_warmed_up_compiles_nothing_for_requests(tiny_bert_dir, small_corpus_path, caplog):
    import jax
    import numpy as np

    from searche1_jax.retrieval.encoder import Encoder
    from searche1_jax.retrieval.scann_index import ScannIndex
    from searche1_jax.retrieval.serve import warm_up

    corpus = Corpus(small_corpus_path)
    enc = Encoder.from_pretrained(tiny_bert_dir, max_length=128, batch_size=4)
    vectors = np.random.default_rng(0).normal(size=(len(corpus), enc.dim)).astype(np.float32)
    index = ScannIndex.build(vectors, corpus, enc)  # ScaNN's search compiles nothing; the encoder does
    with caplog.at_level(logging.INFO):
        warm_up(index, query_tokens=24)
    # rows 1, 2, 4 x widths 16, 24
    assert enc.num_compilations == 6 and "compiled 6 query-encoder shapes" in caplog.text
    compiles = []

    def listen(event, secs, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(secs)

    server, batcher = make_server(index, "127.0.0.1", 0, max_wait_ms=1.0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        client = RetrievalClient(f"http://127.0.0.1:{server.server_address[1]}")
        for batch in (QUERIES[:1], QUERIES[:2], QUERIES[:3], QUERIES, [" ".join(["fort"] * 20)]):
            assert [len(hits) for hits in client.search(batch, 3)] == [3] * len(batch)
        assert compiles == [] and enc.num_compilations == 6
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
        server.shutdown()
        server.server_close()
        batcher.close()
        thread.join(timeout=5)


# A fresh process each time (as a restarted server is): warm up a dense index's query encoder with
# `--compile-cache DIR`; print the persistent cache's hits and misses (JAX's own counters).
RESTART = r"""
import sys
import jax
import numpy as np
from searche1_jax.retrieval.serve import use_compile_cache, warm_up
use_compile_cache(sys.argv[3])
events = []
jax.monitoring.register_event_listener(lambda event, **kw: events.append(event))
from searche1_jax.retrieval.corpus import Corpus
from searche1_jax.retrieval.encoder import Encoder
from searche1_jax.retrieval.scann_index import ScannIndex
corpus = Corpus(sys.argv[2])
enc = Encoder.from_pretrained(sys.argv[1], max_length=128, batch_size=4)
vectors = np.random.default_rng(0).normal(size=(len(corpus), enc.dim)).astype(np.float32)
warm_up(ScannIndex.build(vectors, corpus, enc), query_tokens=24)
print(enc.num_compilations, events.count("/jax/compilation_cache/cache_hits"),
      events.count("/jax/compilation_cache/cache_misses"))
"""


def test_compile_cache_makes_a_restarted_dense_server_read_its_warm_up(tiny_bert_dir, small_corpus_path, tmp_path):
    import subprocess
    import sys

    cache = tmp_path / "xla"

    def start():
        out = subprocess.run([sys.executable, "-c", RESTART, str(tiny_bert_dir), str(small_corpus_path), str(cache)],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        return [int(x) for x in out.stdout.split()[-3:]]

    shapes, hits, misses = start()
    assert shapes == 6 and hits == 0 and misses >= 6      # rows 1, 2, 4 x widths 16, 24: all compiled
    assert len(list(cache.iterdir())) >= 6                # and written, however quick they compiled
    shapes, hits, misses = start()
    assert shapes == 6 and hits >= 6 and misses == 0      # the restart reads every one of them
