"""Client for a Search-R1-style retrieval server (ours or Search-R1's own), same `search()` API.

    client = RetrievalClient("http://127.0.0.1:8000", timeout=30, retries=3, backoff=0.5, deadline=60)
    hits = client.search(["who wrote hamlet"], k=3)   # list[list[Passage]], one list per query

`timeout` bounds one attempt, the whole reply included (not one socket read: a server trickling
bytes used to hold a search forever); `deadline` bounds one `search()` call, retries and backoff
included. Failures, each naming the URL and what to do:
- no answer (refused, reset, timed out) after every retry: RetrieverDownError;
- HTTP 5xx after every retry: RetrieverServerError (the server is up; its log says why);
- HTTP 4xx (bad input, a limit): RetrieverRequestError, a ValueError, at once;
- a reply that is not JSON, or not one list of passages per query: RetrieverError, at once
  (the agent pairs result lists with queries: a short reply would drop trajectories' observations).
Documents may be Search-R1 dense ({"id", "contents"}) or Search-R1 BM25 ({"title", "text",
"contents"}, no id): see `passage_of`.
Batches larger than `max_queries` go as several requests (the server caps queries per request),
`parallel` of them in flight at once; results keep query order. The default is 1 (one after
another): on the 2 shared cores measured (benchmarks/serve_burst.py, RESULTS.md) 4 in flight was
3.1 s vs 3.6 s in one run and 3.2 s vs 2.3 s in another for a 2,560-query BM25 burst; try more on a
server with cores to spare.
"""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence
from urllib.parse import urlparse

from searche1_jax.retrieval.corpus import split_contents
from searche1_jax.retrieval.index import Passage


def passage_of(item: dict) -> Passage:
    """One `{"document": doc, "score": s}` of a reply -> Passage. Search-R1's dense server sends
    the corpus row, doc = {"id", "contents"}; its BM25 server sends doc = {"title", "text",
    "contents"} and no id (Passage.id is then ""). Like Search-R1's agent, the title and text
    come from `contents` (first line, rest); title + text serve only where contents is missing."""
    doc = item["document"]
    if not isinstance(doc, dict):
        raise TypeError(f"document must be an object, got {type(doc).__name__}")
    if "contents" in doc:
        title, text = split_contents(doc["contents"])
    else:
        title, text = doc["title"], doc["text"]
        if not isinstance(title, str) or not isinstance(text, str):
            raise TypeError("title and text must be strings")
    pid = doc.get("id")
    return Passage("" if pid is None else str(pid), title, text, float(item["score"]))


class RetrieverError(RuntimeError):
    """The retriever's reply cannot be used (not JSON, wrong shape, wrong count)."""


class RetrieverDownError(RetrieverError, ConnectionError):
    """No answer from the retriever after every retry."""


class RetrieverServerError(RetrieverError):
    """The retriever answered HTTP 5xx after every retry."""


class RetrieverRequestError(RetrieverError, ValueError):
    """The retriever rejected the request (HTTP 4xx): bad input or over one of its limits."""


class _Failed(Exception):
    """One attempt failed in a way worth retrying; `server_error` when the server answered 5xx."""

    def __init__(self, message: str, server_error: bool = False):
        super().__init__(message)
        self.server_error = server_error


def _check_url(url: str) -> str:
    u = urlparse(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"retriever url must look like http://HOST:PORT (scheme and host), got {url!r}; "
                         f"e.g. http://127.0.0.1:8000")
    return url.rstrip("/").removesuffix("/retrieve")


class RetrievalClient:
    def __init__(self, url: str, timeout: float = 30.0, retries: int = 3, backoff: float = 0.5,
                 deadline: float = 60.0, max_queries: int = 256, parallel: int = 1):
        if retries < 0 or timeout <= 0 or backoff < 0 or deadline <= 0 or max_queries < 1 or parallel < 1:
            raise ValueError(f"need timeout > 0, retries >= 0, backoff >= 0, deadline > 0, max_queries >= 1, "
                             f"parallel >= 1; got {timeout}, {retries}, {backoff}, {deadline}, {max_queries}, "
                             f"{parallel}")
        self.parallel = parallel
        self.url = _check_url(url)
        u = urlparse(self.url)
        self._https, self._host, self._port, self._base = u.scheme == "https", u.hostname, u.port, u.path
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.deadline, self.max_queries = deadline, max_queries

    def _attempt(self, path: str, data: bytes | None, budget: float) -> tuple[int, bytes]:
        """(status, body) within `budget` seconds in all, or _Failed."""
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=budget)
        start = time.monotonic()

        def abort():  # wakes a read that a trickling server keeps alive past the budget
            if conn.sock is not None:
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        timer = threading.Timer(budget, abort)
        timer.daemon = True
        timer.start()
        try:
            conn.request("GET" if data is None else "POST", self._base + path, body=data,
                         headers={"Content-Type": "application/json", "Connection": "close"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException) as e:
            if time.monotonic() - start >= budget * 0.99:
                raise _Failed(f"no whole reply within {budget:.1f} s") from None
            raise _Failed(f"{type(e).__name__}: {e}") from None
        finally:
            timer.cancel()
            conn.close()

    def _request(self, path: str, body: dict | None = None, *, until: float | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        until = time.monotonic() + self.deadline if until is None else until
        last, attempts = None, 0
        for attempt in range(self.retries + 1):
            budget = min(self.timeout, until - time.monotonic())
            if budget <= 0:
                break
            attempts += 1
            try:
                status, raw = self._attempt(path, data, budget)
            except _Failed as e:
                last = e
            else:
                if status == 200:
                    return self._json(raw)
                msg = raw.decode("utf-8", "replace")
                try:
                    msg = json.loads(msg).get("error", msg)
                except (json.JSONDecodeError, AttributeError):
                    pass
                if 400 <= status < 500:
                    raise RetrieverRequestError(f"retriever at {self.url} rejected the request (HTTP {status}): {msg}")
                last = _Failed(f"HTTP {status}: {msg}", server_error=status >= 500)
            if attempt < self.retries:
                time.sleep(max(0.0, min(self.backoff * 2 ** attempt, until - time.monotonic())))
        tried = f"after {attempts} attempt{'s' * (attempts != 1)} within the {self.deadline:g} s deadline"
        if last is not None and last.server_error:
            raise RetrieverServerError(f"retriever at {self.url} is up but failing: {last} ({tried}); "
                                       f"its log says why")
        raise RetrieverDownError(
            f"retriever at {self.url} is down: {last} ({tried}); start it with "
            f"python -m searche1_jax.retrieval.serve --index DIR --port {self._port or 8000}")

    def _json(self, raw: bytes) -> dict:
        try:
            out = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RetrieverError(f"retriever at {self.url} sent a reply that is not JSON ({e}): {raw[:80]!r}; "
                                 f"is it a Search-R1-style retrieval server?") from None
        if not isinstance(out, dict):
            raise RetrieverError(f"retriever at {self.url} sent {type(out).__name__} JSON, expected an object")
        return out

    def health(self) -> dict:
        return self._request("/health")

    def search(self, queries: Sequence[str], k: int = 3) -> list[list[Passage]]:
        """One list of at most k passages per query (empty where the index matched nothing)."""
        queries = list(queries)
        until = time.monotonic() + self.deadline
        chunks = [queries[i:i + self.max_queries] for i in range(0, len(queries), self.max_queries)]

        def one(chunk):
            body = self._request("/retrieve", {"queries": chunk, "topk": k, "return_scores": True}, until=until)
            return self._passages(body, chunk, k)

        if len(chunks) <= 1 or self.parallel == 1:
            return [row for chunk in chunks for row in one(chunk)]
        with ThreadPoolExecutor(min(self.parallel, len(chunks)), thread_name_prefix="retrieval-client") as ex:
            futures = [ex.submit(one, chunk) for chunk in chunks]
            try:
                return [row for f in futures for row in f.result()]
            except BaseException:
                for f in futures:  # the first failure is the answer: send nothing more
                    f.cancel()
                raise

    def _passages(self, body: dict, queries: list[str], k: int) -> list[list[Passage]]:
        rows = body.get("result")
        if not isinstance(rows, list):
            raise RetrieverError(f"retriever at {self.url} sent no 'result' list: {str(body)[:120]}")
        if len(rows) != len(queries):
            raise RetrieverError(f"retriever at {self.url} sent {len(rows)} result lists for {len(queries)} "
                                 f"queries: a reply needs one list per query, in order")
        out = []
        for i, row in enumerate(rows):
            if not isinstance(row, list) or len(row) > k:
                raise RetrieverError(f"retriever at {self.url}: result {i} must be a list of at most {k} "
                                     f"passages, got {str(row)[:120]}")
            hits = []
            for j, item in enumerate(row):
                try:
                    hits.append(passage_of(item))
                except (KeyError, TypeError, ValueError, AttributeError) as e:
                    raise RetrieverError(
                        f"retriever at {self.url}: result {i}, passage {j} is not "
                        f'{{"document": {{"id": .., "contents": ..}}, "score": ..}} (Search-R1 dense) nor '
                        f'{{"document": {{"title": .., "text": .., "contents": ..}}, "score": ..}} (Search-R1 BM25) '
                        f"({type(e).__name__}: {e}): {str(item)[:120]}") from None
            out.append(hits)
        return out
