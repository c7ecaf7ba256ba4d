"""HTTP retrieval service in Search-R1's wire format (stdlib only).

    python -m searche1_jax.retrieval.serve --index DIR --port 8000

    POST /retrieve {"queries": [...], "topk": 3, "return_scores": true}
      -> {"result": [[{"document": {"id": "12", "contents": "\"Title\"\ntext"}, "score": 0.83}, ...], ...]}
      with return_scores false (Search-R1's default): {"result": [[{"id": ..., "contents": ...}, ...], ...]}
      a missing/null topk means the server's --topk (3). Search-R1 also maps topk 0 to its default;
      we answer 400 for topk <= 0 instead (an explicit bad value is a caller bug). A query the index
      cannot match (BM25: no indexable word, "the") gets an empty list, counted in /health.
    GET /health -> {"status": "ok", "kind": ..., "num_passages": N, "queries": .., "empty_queries": ..,
                    "limits": {...}}
Every error, for any method or path, is JSON {"error": message} naming the problem and the fix
(400 bad input, 404 path, 405 method, 411/413 body, 503 busy); each is one line in the log.

Limits (issue 23), so that no input can take the server down (`connections.py`): a request may ask
for at most --max-topk passages per query and --max-queries queries in a body of at most
--max-body-bytes, which bounds one reply to max_queries × max_topk passages; at most
--max-connections are served at once (more get 503); a connection must deliver each whole request
(headers and body) within --read-timeout seconds or is closed (slow-loris clients, a
Content-Length larger than the body). The listen backlog is --backlog (the stdlib's 5 reset
0.5-1.9% of requests at 32 concurrent clients). Queries are micro-batched (`batcher.py`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler

from searche1_jax.retrieval.bm25 import BACKENDS
from searche1_jax.retrieval.batcher import MicroBatcher
from searche1_jax.retrieval.connections import LIMIT_HELP, Limits, RetrievalServer, log
from searche1_jax.retrieval.index import Index, Passage, check_queries


class RequestError(ValueError):
    """Bad input: answered with `code` and the message; the server stays up."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def document(p: Passage) -> dict:
    """Search-R1's `document`: the corpus row (id + contents)."""
    return {"id": p.id, "contents": p.contents}


def result_json(hits: list[list[Passage]], return_scores: bool) -> dict:
    if return_scores:
        return {"result": [[{"document": document(p), "score": p.score} for p in row] for row in hits]}
    return {"result": [[document(p) for p in row] for row in hits]}


def parse_retrieve(raw: bytes, limits: Limits, default_topk: int, num_passages: int):
    """The body of POST /retrieve -> (queries, k, return_scores), or RequestError."""
    try:
        body = json.loads(raw or b"null")
    except json.JSONDecodeError as e:
        raise RequestError(400, f"malformed JSON body: {e.msg} at position {e.pos}") from None
    except UnicodeDecodeError as e:
        raise RequestError(400, f"body is not UTF-8 JSON: {e}") from None
    if not isinstance(body, dict) or "queries" not in body:
        raise RequestError(400, 'body must be a JSON object {"queries": [...], "topk": k, "return_scores": bool}')
    queries, k = body["queries"], body.get("topk")
    k = default_topk if k is None else k
    return_scores = body.get("return_scores", False)
    if not isinstance(return_scores, bool):
        raise RequestError(400, f"return_scores must be true or false, got {return_scores!r}")
    if isinstance(queries, list) and len(queries) > limits.max_queries:
        raise RequestError(413, f"{len(queries)} queries exceed this server's --max-queries {limits.max_queries}: "
                                f"split them over several requests (RetrievalClient does)")
    check_queries(queries, k, num_passages)
    if k > limits.max_topk:
        raise RequestError(400, f"topk={k} exceeds this server's --max-topk {limits.max_topk}: ask for fewer "
                                f"passages, or restart the server with a larger --max-topk")
    return list(queries), int(k), return_scores


ALLOWED = {"/retrieve": "POST", "/health": "GET"}


def make_handler(index: Index, batcher: MicroBatcher, default_topk: int, search_timeout: float, limits: Limits):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # per socket operation, a backstop: the reaper closes a connection after read_timeout already
        timeout = 2 * limits.read_timeout
        reaped = False
        accepted = True

        def setup(self):
            super().setup()
            self.accepted = self.server.register(self)

        def finish(self):
            try:
                super().finish()
            finally:
                self.server.unregister(self)

        def handle(self):
            if not self.accepted:
                self.command, self.request_version = None, "HTTP/1.1"
                self._send(503, {"error": f"server busy: {limits.max_connections} connections open "
                                          f"(--max-connections); retry shortly"}, close=True)
                log.warning("refused a connection from %s: --max-connections %d reached",
                            self.client_address[0], limits.max_connections)
                return
            super().handle()

        def handle_one_request(self):
            self.server.arm(self)
            super().handle_one_request()

        def log_request(self, code="-", size="-"):  # successes are not logged
            pass

        def log_message(self, fmt, *args):  # failures: one line each
            log.warning("%s %s: %s", self.client_address[0], getattr(self, "requestline", ""), fmt % args)

        def _send(self, code: int, body: dict, close: bool = False, allow: str | None = None) -> None:
            if self.reaped:  # the reaper shut this connection (and logged why): nobody to answer
                self.close_connection = True
                return
            data = json.dumps(body).encode()
            self.server.arm(self)  # a client that does not read its reply is closed too
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if allow:
                self.send_header("Allow", allow)
            if close:
                self.close_connection = True
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def send_error(self, code, message=None, explain=None):
            """The stdlib's errors (bad request line, unknown method, header too long) as JSON."""
            text = message or explain or HTTPStatus(code).phrase
            if code == HTTPStatus.NOT_IMPLEMENTED:
                text += "; this service answers POST /retrieve and GET /health"
            self.log_error("%d %s", code, text)
            self._send(code, {"error": text}, close=True)

        def _fail(self, code: int, message: str, **kw) -> None:
            self.log_error("%d %s", code, message)
            self._send(code, {"error": message}, **kw)

        def _route(self, method: str) -> bool:
            """True when (method, path) is served here; else answers 404 or 405 and returns False."""
            path = self.path.split("?", 1)[0].rstrip("/")
            want = ALLOWED.get(path)
            close = method not in ("GET", "HEAD")  # a body may follow that we do not read
            if want is None:
                self._fail(404, f"unknown path {self.path}; use POST /retrieve or GET /health", close=close)
            elif want != method:
                self._fail(405, f"{path} takes {want}, not {method}", allow=want, close=close)
            return want == method

        def do_GET(self):
            if self._route("GET"):
                self._send(200, {"status": "ok", "kind": index.kind, "num_passages": index.num_passages,
                                 "queries": batcher.queries_run, "empty_queries": batcher.empty_queries,
                                 "closed_slow_connections": self.server.closed_slow,
                                 "limits": dataclasses.asdict(limits)})

        def do_HEAD(self):
            self._route("HEAD")

        def do_PUT(self):
            self._route("PUT")

        def do_DELETE(self):
            self._route("DELETE")

        def do_PATCH(self):
            self._route("PATCH")

        def do_OPTIONS(self):
            self._route("OPTIONS")

        def _read_body(self) -> bytes | None:
            """The request body, or None after answering the problem (411/400/413)."""
            if self.headers.get("Transfer-Encoding"):
                self._fail(411, "send the body with a Content-Length header (chunked transfer encoding "
                                "is not supported)", close=True)
                return None
            raw = self.headers.get("Content-Length")
            if raw is None:
                self._fail(411, "POST /retrieve needs a Content-Length header", close=True)
                return None
            try:
                n = int(raw)
            except ValueError:
                n = -1
            if n < 0:
                self._fail(400, f"Content-Length must be a byte count >= 0, got {raw!r}", close=True)
                return None
            if n > limits.max_body_bytes:
                self._fail(413, f"request body of {n} bytes exceeds this server's --max-body-bytes "
                                f"{limits.max_body_bytes}: send fewer queries per request", close=True)
                return None
            body = self.rfile.read(n)
            if len(body) < n:
                self.close_connection = True
                if not self.reaped:  # the reaper already logged it, and the socket is shut
                    self._fail(400, f"body ended after {len(body)} of the {n} bytes its Content-Length "
                                    f"announced", close=True)
                return None
            return body

        def do_POST(self):
            if not self._route("POST"):
                return
            raw = self._read_body()
            if raw is None:
                return
            try:
                queries, k, return_scores = parse_retrieve(raw, limits, default_topk, index.num_passages)
            except RequestError as e:
                self._fail(e.code, str(e))
                return
            except ValueError as e:
                self._fail(400, str(e))
                return
            self.server.disarm(self)  # searching is the server's time, not the client's
            future = batcher.submit(queries, k)
            try:
                hits = future.result(timeout=search_timeout)
            except TimeoutError:
                future.cancel()
                self._fail(503, f"search took longer than {search_timeout:g} s (server overloaded); retry later")
                return
            except ValueError as e:
                self._fail(400, str(e))
                return
            except Exception as e:  # noqa: BLE001
                self._fail(500, f"search failed: {type(e).__name__}: {e}")
                return
            self._send(200, result_json(hits, return_scores))

    return Handler


def make_server(index: Index, host: str = "127.0.0.1", port: int = 8000, *, default_topk: int = 3,
                max_batch: int = 64, max_wait_ms: float = 5.0, timeout: float = 120.0,
                limits: Limits = Limits()):
    """(server, batcher); call `server.serve_forever()` (port 0 picks a free port)."""
    if not 1 <= default_topk <= limits.max_topk:
        raise ValueError(f"--topk must be in [1, --max-topk={limits.max_topk}], got {default_topk}")
    batcher = MicroBatcher(index, max_batch=max_batch, max_wait_ms=max_wait_ms)
    handler = make_handler(index, batcher, default_topk, timeout, limits)
    return RetrievalServer((host, port), handler, limits), batcher


# The widths a dense server compiles at start: the 2,560 distinct questions and titles of
# benchmarks/serve_burst.py are 17 tokens at the median, 37 at p99 and 91 at most with MiniLM's
# tokenizer; width 64 holds 99.9% of them. A longer query still works: it compiles once, then.
WARM_UP_TOKENS = 64


def warm_up(index: Index, query_tokens: int = WARM_UP_TOKENS) -> None:
    """Compile before the first request, not during it: a BM25 index's numba scorer; a dense
    index's query encoder at every (rows, width) bucket for queries of up to `query_tokens`
    tokens (issue 22: each shape compiled in a request cost that request 1-2 s)."""
    t0 = time.perf_counter()
    encoder = getattr(index, "encoder", None)
    if encoder is not None:
        new = encoder.warm_up(query_tokens)
        what = f"{new} query-encoder shapes (rows up to {encoder.batch_size}, up to {query_tokens} tokens)"
    elif hasattr(index, "warm_up"):
        index.warm_up()
        what = f"the {getattr(index, 'backend', index.kind)} scorer"
    else:
        return
    logging.info("warm-up: compiled %s in %.1f s (--no-warm-up skips it)", what, time.perf_counter() - t0)


def use_compile_cache(path: str) -> None:
    """JAX's persistent compilation cache in `path` (as train/compile_cache.py does for training),
    for every shape however quick to compile (JAX's default skips those under 1 s): a restarted
    dense server then reads all its warm-up shapes instead of compiling them. Call before any jit."""
    import jax

    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Serve an index over HTTP in Search-R1's /retrieve format.")
    ap.add_argument("--index", required=True, help="index directory made by searche1_jax.retrieval.build")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--topk", type=int, default=3, help="topk when a request gives none (Search-R1: 3)")
    ap.add_argument("--max-batch", type=int, default=64, help="queries per index search")
    ap.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests")
    ap.add_argument("--bm25-backend", default="auto", choices=BACKENDS,
                    help="a BM25 index's scorer: numba (compiled, ~10x a burst; auto = numba when installed)")
    ap.add_argument("--no-warm-up", action="store_true",
                    help="start serving at once; each new shape then compiles in the first request that needs it")
    ap.add_argument("--warm-up-tokens", type=int, default=WARM_UP_TOKENS,
                    help="dense index: compile the query encoder for queries of up to this many tokens at start")
    ap.add_argument("--compile-cache", default=None, metavar="DIR",
                    help="JAX's persistent compilation cache: a restarted dense server reads its warm-up's "
                         "executables from DIR instead of compiling them again")
    d = Limits()
    for f in dataclasses.fields(Limits):
        ap.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(d, f.name)), default=getattr(d, f.name),
                        help=f"{LIMIT_HELP[f.name]} (default {getattr(d, f.name)})")
    args = ap.parse_args(argv)
    if args.warm_up_tokens < 1:
        ap.error(f"--warm-up-tokens must be >= 1, got {args.warm_up_tokens}; use --no-warm-up to skip the warm-up")
    limits = Limits(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Limits)})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.compile_cache:
        use_compile_cache(args.compile_cache)
    from searche1_jax.retrieval.store import load_index

    index = load_index(args.index, bm25_backend=args.bm25_backend)
    if not args.no_warm_up:
        warm_up(index, args.warm_up_tokens)
    server, batcher = make_server(index, args.host, args.port, default_topk=args.topk, max_batch=args.max_batch,
                                  max_wait_ms=args.max_wait_ms, limits=limits)
    print(f"serving {index.kind} index ({index.num_passages} passages) on "
          f"http://{args.host}:{server.server_address[1]}/retrieve", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        batcher.close()


if __name__ == "__main__":
    main()
