"""`MicroBatcher`: merges concurrent requests into few `index.search` calls, fairly.

One worker thread owns the index. It waits up to `max_wait_ms` after a request arrives for others,
then runs one search over at most `max_batch` queries taken from the waiting requests in arrival
order. A request bigger than that is served a slice per batch and goes back to the end of the
line, so a 1,000-query request cannot make a 1-query request wait for all of it (issue 23: one
50 MB request held a tiny one for 6 s): a small request waits at most about one batch.
"""
from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Future, InvalidStateError

from searche1_jax.retrieval.index import Index


class _Request:
    __slots__ = ("queries", "k", "future", "hits", "next", "left")

    def __init__(self, queries: list[str], k: int):
        self.queries, self.k, self.future = queries, k, Future()
        self.hits: list = [None] * len(queries)
        self.next = 0              # first query not yet handed to a batch
        self.left = len(queries)   # queries whose hits have not come back


def _settle(future: Future, result=None, exception: BaseException | None = None) -> None:
    """Complete `future` unless its caller cancelled it (gave up waiting): then nobody listens."""
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


class MicroBatcher:
    """`submit(queries, k)` -> Future of list[list[Passage]] (one list per query, best first)."""

    def __init__(self, index: Index, *, max_batch: int = 64, max_wait_ms: float = 5.0):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"need max_batch >= 1 and max_wait_ms >= 0, got {max_batch}, {max_wait_ms}")
        self.index, self.max_batch, self.max_wait = index, max_batch, max_wait_ms / 1000.0
        self._pending: collections.deque[_Request] = collections.deque()
        self._cv = threading.Condition()
        self.batches_run = 0
        self.queries_run = 0
        self.empty_queries = 0   # queries answered with no passage (BM25: no indexable word)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="retrieval-batcher", daemon=True)
        self._thread.start()

    def submit(self, queries: list[str], k: int) -> Future:
        req = _Request(list(queries), int(k))
        if not req.queries:
            req.future.set_result([])
            return req.future
        with self._cv:
            self._pending.append(req)
            self._cv.notify()
        return req.future

    def _waiting(self) -> int:
        return sum(len(r.queries) - r.next for r in self._pending)

    def _take(self) -> list[tuple[_Request, int, int]]:
        """Slices (request, start, stop) of at most max_batch queries; call with the lock held."""
        taken, n = [], 0
        for req in list(self._pending):
            if n >= self.max_batch:
                break
            self._pending.remove(req)
            if req.future.cancelled():  # its caller gave up (timeout): do not search for it
                continue
            m = min(len(req.queries) - req.next, self.max_batch - n)
            taken.append((req, req.next, req.next + m))
            req.next += m
            n += m
            if req.next < len(req.queries):
                self._pending.append(req)  # the rest waits its turn behind everyone else
        return taken

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._cv:
                if not self._pending:
                    self._cv.wait(timeout=0.1)
                    continue
                deadline = time.monotonic() + self.max_wait  # gather, unless a full batch already waits
                while self._waiting() < self.max_batch and not self._stop.is_set():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(timeout=left)
                taken = self._take()
            if taken:
                self._run(taken)

    def _run(self, taken) -> None:
        queries = [q for req, a, b in taken for q in req.queries[a:b]]
        k = max(req.k for req, _, _ in taken)  # search once at the largest k, then cut per request
        try:
            hits = self.index.search(queries, k)
        except Exception as e:  # noqa: BLE001  (delivered to every request in the batch)
            with self._cv:
                for req, _, _ in taken:
                    if req in self._pending:
                        self._pending.remove(req)
            for req, _, _ in taken:
                _settle(req.future, exception=e)
            return
        self.batches_run += 1
        self.queries_run += len(queries)
        self.empty_queries += sum(1 for row in hits if not row)
        start = 0
        for req, a, b in taken:
            req.hits[a:b] = [row[:req.k] for row in hits[start:start + b - a]]
            start += b - a
            req.left -= b - a
            if req.left == 0:
                _settle(req.future, result=req.hits)

    def close(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        self._thread.join(timeout=2)
