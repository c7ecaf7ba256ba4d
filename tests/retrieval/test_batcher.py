"""MicroBatcher on a fake index whose search takes 2 ms per query (no corpus, no server)."""
import threading
import time

import pytest

from searche1_jax.retrieval.batcher import MicroBatcher
from searche1_jax.retrieval.index import Passage


class SlowIndex:
    kind, num_passages = "fake", 10

    def __init__(self):
        self.calls = []

    def search(self, queries, k):
        self.calls.append(len(queries))
        time.sleep(0.002 * len(queries))
        return [[Passage(q, q, q, float(i)) for i in range(k)] for q in queries]


@pytest.fixture
def batcher():
    b = MicroBatcher(SlowIndex(), max_batch=16, max_wait_ms=1.0)
    yield b
    b.close()


def test_a_small_request_does_not_wait_behind_a_big_one(batcher):
    big = batcher.submit([f"b{i}" for i in range(400)], 2)  # 0.8 s of searching
    time.sleep(0.01)
    t = time.monotonic()
    small = batcher.submit(["s"], 1)
    assert small.result(timeout=5)[0][0].id == "s"
    small_wait = time.monotonic() - t
    assert not big.done() and small_wait < 0.2, small_wait  # about one batch of 16, not 400 queries
    rows = big.result(timeout=10)
    assert [r[0].id for r in rows] == [f"b{i}" for i in range(400)] and all(len(r) == 2 for r in rows)
    assert max(batcher.index.calls) <= 16


def test_concurrent_requests_share_searches_and_keep_their_k(batcher):
    futures = [None] * 8
    barrier = threading.Barrier(8)

    def go(i):
        barrier.wait(timeout=5)
        futures[i] = batcher.submit([f"q{i}"], 1 + i % 3)

    threads = [threading.Thread(target=go, args=(i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=5)
    for i, f in enumerate(futures):
        assert [[p.id for p in row] for row in f.result(timeout=5)] == [[f"q{i}"] * (1 + i % 3)]
    assert batcher.batches_run < 8


def test_a_cancelled_request_is_not_searched(batcher):
    blocker = batcher.submit([f"x{i}" for i in range(16)], 1)  # holds the worker ~30 ms
    gone = batcher.submit(["gone"], 1)
    assert gone.cancel()
    blocker.result(timeout=5)
    batcher.submit(["after"], 1).result(timeout=5)
    assert batcher.queries_run == 17
