"""RetrievalClient against scripted loopback servers that misbehave (each stops in the fixture)."""
import json
import socket
import threading
import time

import pytest

from searche1_jax.retrieval.client import (RetrievalClient, RetrieverDownError, RetrieverError,
                                           RetrieverServerError)


class Scripted:
    """Answers every connection with `respond(conn)` on a daemon thread, until `close()`."""

    def __init__(self, respond):
        self.respond, self.stop = respond, threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        with conn:
            conn.settimeout(2)
            try:
                conn.recv(65536)
                self.respond(conn, self.stop)
            except OSError:
                pass

    def close(self):
        self.stop.set()
        self.thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def scripted():
    servers = []

    def make(respond):
        servers.append(Scripted(respond))
        return servers[-1].url

    yield make
    for s in servers:
        s.close()


def answer(body: bytes, status: str = "200 OK"):
    def respond(conn, stop):
        conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                     f"Connection: close\r\n\r\n".encode() + body)
    return respond


def test_a_trickling_server_times_out_at_the_timeout_not_never(scripted):
    def trickle(conn, stop):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        while not stop.wait(0.05):  # a byte each 50 ms: every read succeeds, the reply never ends
            conn.sendall(b" ")
    url = scripted(trickle)
    t = time.monotonic()
    with pytest.raises(RetrieverDownError, match=r"no whole reply within 0.5 s.*1 attempt"):
        RetrievalClient(url, timeout=0.5, retries=0).search(["q"], 3)
    assert time.monotonic() - t < 1.5


def test_the_deadline_bounds_all_retries(scripted):
    url = scripted(lambda conn, stop: stop.wait(5))  # accepts, never answers
    t = time.monotonic()
    with pytest.raises(RetrieverDownError, match="deadline"):
        RetrievalClient(url, timeout=0.4, retries=10, backoff=0.2, deadline=1.0).search(["q"], 3)
    assert time.monotonic() - t < 1.6


def test_fewer_result_lists_than_queries_is_an_error(scripted):
    url = scripted(answer(b'{"result": [[]]}'))
    with pytest.raises(RetrieverError, match=r"1 result lists for 2 queries"):
        RetrievalClient(url, retries=0).search(["a", "b"], 3)


@pytest.mark.parametrize("body,msg", [
    (b"<html>hello</html>", "not JSON"),
    (b"[1, 2]", "list JSON, expected an object"),
    (b'{"results": []}', "no 'result' list"),
    (b'{"result": [[{"doc": 1}]]}', r"result 0, passage 0 is not .*KeyError"),
    (b'{"result": [[{"document": {"id": 1, "contents": "\\"T\\"\\nx"}, "score": "high"}]]}', "ValueError"),
    (b'{"result": [3]}', "result 0 must be a list of at most 3"),
])
def test_a_malformed_reply_is_a_retriever_error_naming_the_url(scripted, body, msg):
    url = scripted(answer(body))
    with pytest.raises(RetrieverError, match=msg) as e:
        RetrievalClient(url, retries=0).search(["a"], 3)
    assert url in str(e.value) and type(e.value) is RetrieverError


def test_http_500_says_the_server_is_up_and_failing(scripted):
    url = scripted(answer(b'{"error": "search failed: MemoryError"}', "500 Internal Server Error"))
    with pytest.raises(RetrieverServerError, match=r"is up but failing: HTTP 500: search failed: MemoryError "
                                                   r"\(after 2 attempts") as e:
        RetrievalClient(url, retries=1, backoff=0.01).search(["a"], 3)
    assert "start it" not in str(e.value) and not isinstance(e.value, RetrieverDownError)


@pytest.mark.parametrize("url", ["localhost:8000", "127.0.0.1:8000", "ftp://127.0.0.1:8000", "http://"])
def test_a_url_without_scheme_or_host_is_a_config_error(url):
    with pytest.raises(ValueError, match=r"must look like http://HOST:PORT.*" + url.split(":")[0]):
        RetrievalClient(url)


def test_a_good_reply_parses(scripted):
    doc = {"document": {"id": "7", "contents": '"Paul Walker"\nan actor'}, "score": 1.5}
    url = scripted(answer(json.dumps({"result": [[doc], []]}).encode()))
    hits = RetrievalClient(url, retries=0).search(["a", "the"], 3)
    got = [[(p.id, p.title, p.text, p.score) for p in h] for h in hits]
    assert got == [[("7", "Paul Walker", "an actor", 1.5)], []]
