"""Load on the BM25 retrieval service: error rate and p50/p99 latency at 1, 8, 32, 128 concurrent
clients, the server's RSS under hostile requests, slow connections left open, and how long a
1-query request waits behind a big one (issue 23).

    .venv/bin/python benchmarks/serve_load.py                       # both arms, 20 requests a client
    .venv/bin/python benchmarks/serve_load.py --arms after --clients 32 --requests 50

Two servers run side by side (subprocesses), measured in turn at each level so both see the same
machine drift: `after` is `serve.py` with its default limits; `before` is the same code with the
old settings: --backlog 5 (the stdlib's), caps off (max topk = corpus size, 10^6 queries, 1 GB
bodies, 10^4 connections, a 1-hour read timeout) and --max-batch 10^6 (a big request is searched
in one go, as the old batcher did). Each client is a thread making one request per connection
(as Search-R1's `requests.post` does): one dev question, topk 3. The load generator shares the
machine with the servers: on 2 cores its own threads cost latency too.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = "/work/shared/data/corpus/wiki_small.jsonl"
DEMO = os.path.join(ROOT, "searche1_jax", "assets", "demo", "corpus.jsonl")
QUESTIONS = os.path.join(ROOT, "searche1_jax", "assets", "demo", "dev.jsonl")
BIG = 10 ** 6
BEFORE = ["--backlog", "5", "--max-queries", str(BIG), "--max-body-bytes", str(BIG * 1000),
          "--max-connections", str(10 ** 4), "--read-timeout", "3600", "--max-batch", str(BIG)]


def start(index: str, extra: list[str]):
    """A server subprocess on a free port -> (process, port)."""
    p = subprocess.Popen([sys.executable, "-m", "searche1_jax.retrieval.serve", "--index", index, "--port", "0",
                          *extra], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    line = p.stdout.readline()
    m = re.search(r":(\d+)/retrieve", line)
    if not m:
        p.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return p, int(m.group(1))


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of `pid` in MB."""
    with open(f"/proc/{pid}/status") as f:
        kv = dict(line.split(":", 1) for line in f)
    return int(kv["VmRSS"].split()[0]) / 1024, int(kv["VmHWM"].split()[0]) / 1024


def post(port: int, body: dict, timeout: float = 60.0) -> tuple[int, int]:
    """(status, reply bytes); a new connection per request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/retrieve", body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json", "Connection": "close"})
        r = conn.getresponse()
        return r.status, len(r.read())
    finally:
        conn.close()


def load(port: int, clients: int, requests: int, questions: list[str], seed: int) -> dict:
    lat, errors, lock = [], [], threading.Lock()
    barrier = threading.Barrier(clients)

    def client(i):
        rng = random.Random(seed * 1000 + i)
        barrier.wait(timeout=60)
        for _ in range(requests):
            t = time.perf_counter()
            try:
                status, _ = post(port, {"queries": [rng.choice(questions)], "topk": 3, "return_scores": True})
                err = None if status == 200 else f"HTTP {status}"
            except Exception as e:  # noqa: BLE001  (counted: resets, timeouts)
                err = type(e).__name__
            with lock:
                lat.append(time.perf_counter() - t)
                if err:
                    errors.append(err)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    wall = time.perf_counter() - t0
    ms = np.asarray(lat) * 1000
    return {"clients": clients, "requests": len(lat), "errors": len(errors),
            "error_rate": len(errors) / max(len(lat), 1), "kinds": sorted(set(errors)),
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max()), "rps": len(lat) / wall}


def small_behind_big(port: int, questions: list[str], big: int) -> dict:
    """Latency of a 1-query request sent 20 ms after a `big`-query one."""
    out = {}

    def send_big():
        t = time.perf_counter()
        out["big_status"], _ = post(port, {"queries": (questions * (big // len(questions) + 1))[:big], "topk": 3})
        out["big_ms"] = (time.perf_counter() - t) * 1000

    th = threading.Thread(target=send_big, daemon=True)
    th.start()
    time.sleep(0.02)
    t = time.perf_counter()
    out["small_status"], _ = post(port, {"queries": questions[:1], "topk": 3})
    out["small_ms"] = (time.perf_counter() - t) * 1000
    th.join(timeout=120)
    return out


def slow_connections(port: int, n: int, wait: float) -> int:
    """Open `n` connections that send half a request, wait, and count those still open."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        socks.append(s)
    time.sleep(wait)
    still = 0
    for s in socks:
        s.setblocking(False)
        try:
            still += s.recv(1) != b""
        except BlockingIOError:
            still += 1
        except OSError:
            pass
        s.close()
    return still


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=SHARED if os.path.exists(SHARED) else DEMO)
    ap.add_argument("--clients", default="1,8,32,128")
    ap.add_argument("--requests", type=int, default=20, help="requests per client")
    ap.add_argument("--arms", default="before,after")
    ap.add_argument("--slow", type=int, default=200, help="slow connections opened per arm (0: skip)")
    ap.add_argument("--no-hostile", action="store_true", help="skip the 20 x topk=corpus request")
    args = ap.parse_args(argv)
    sys.path.insert(0, ROOT)
    from searche1_jax.retrieval.serve import Limits

    questions = [json.loads(line)["question"] for line in open(QUESTIONS)]
    arms = args.arms.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        index = os.path.join(tmp, "bm25")
        subprocess.run([sys.executable, "-m", "searche1_jax.retrieval.build", "--corpus", args.corpus,
                        "--encoder", "bm25", "--index", "bm25", "--out", index], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
        n = sum(1 for _ in open(args.corpus, "rb"))
        extra = {"before": BEFORE + ["--max-topk", str(n)], "after": []}
        servers = {a: start(index, extra[a]) for a in arms}
        print(json.dumps({"corpus": args.corpus, "passages": n, "cpu": cpu_name(),
                          "servers_rss_mb": {a: rss_mb(p.pid)[0] for a, (p, _) in servers.items()}}), flush=True)
        try:
            for i, c in enumerate(int(x) for x in args.clients.split(",")):
                for a in (arms if i % 2 == 0 else arms[::-1]):
                    r = load(servers[a][1], c, args.requests, questions, seed=c)
                    print(json.dumps({"arm": a, **r, "rss_mb": rss_mb(servers[a][0].pid)[0]}), flush=True)
            for a in arms:
                p, port = servers[a]
                r = {"arm": a, **small_behind_big(port, questions, Limits().max_queries)}
                if not args.no_hostile:  # the request: 20 queries at topk = corpus size
                    t = time.perf_counter()
                    try:
                        r["hostile_status"], r["hostile_reply_mb"] = post(port, {"queries": questions[:20], "topk": n})
                        r["hostile_reply_mb"] /= 1e6
                    except Exception as e:  # noqa: BLE001
                        r["hostile_status"] = type(e).__name__
                    r["hostile_s"] = time.perf_counter() - t
                    # the biggest request the caps allow: max_queries x max_topk passages
                    lim = Limits()
                    status, size = post(port, {"queries": (questions * 100)[:lim.max_queries], "topk": lim.max_topk})
                    r["largest_allowed"] = {"status": status, "reply_mb": size / 1e6}
                r["rss_mb"], r["peak_rss_mb"] = rss_mb(p.pid)
                if args.slow:
                    wait = Limits().read_timeout + 2
                    r["slow_open_after_s"] = wait
                    r["slow_still_open"] = f"{slow_connections(port, args.slow, wait)}/{args.slow}"
                print(json.dumps(r), flush=True)
        finally:
            for p, _ in servers.values():
                p.terminate()
                p.wait(timeout=10)


def cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")


if __name__ == "__main__":
    main()
