"""Which connections the retrieval service holds, and for how long (issue 23).

`Limits` is everything a request or the whole server may take. `RetrievalServer` is the stdlib's
ThreadingHTTPServer with a listen backlog of `limits.backlog` (the stdlib's 5 reset 0.5-1.9% of
requests at 32 concurrent clients), at most `limits.max_connections` connections served at once,
and a reaper thread that shuts a connection which has not delivered a whole request (headers and
body) within `limits.read_timeout` seconds: a slow-loris client, a Content-Length larger than the
body, an idle keep-alive. Handlers call `register`/`unregister` around a connection, `arm` when
they start reading a request or writing a reply, `disarm` while the server itself works.
"""
from __future__ import annotations

import dataclasses
import logging
import socket
import sys
import threading
import time
from http.server import ThreadingHTTPServer

log = logging.getLogger("searche1_jax.retrieval.serve")  # the service's one log


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request and the whole server may take; each bounds memory or a wait."""
    max_topk: int = 20               # passages per query (Search-R1 and Search-E1 use 3)
    max_queries: int = 1024          # queries per request (RetrievalClient sends at most 256)
    max_body_bytes: int = 1 << 20    # 1 MiB: 1,024 queries of ~1 KB
    max_connections: int = 256       # connections served at once; more are answered 503
    read_timeout: float = 10.0       # seconds to receive one whole request (and an idle keep-alive)
    backlog: int = 128               # listen() queue: connections waiting for accept()

    def __post_init__(self):
        for name in ("max_topk", "max_queries", "max_body_bytes", "max_connections", "backlog"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.read_timeout > 0:
            raise ValueError(f"--read-timeout must be > 0 seconds, got {self.read_timeout}")


LIMIT_HELP = {  # the serve command's --help for each Limits field
    "max_topk": "passages per query a request may ask for (413 above it)",
    "max_queries": "queries per request (413 above it; the client splits its batches to fit)",
    "max_body_bytes": "request body size in bytes (413 above it, before the body is read)",
    "max_connections": "connections served at once (503 above it)",
    "read_timeout": "seconds to receive one whole request; slower or idle connections are closed",
    "backlog": "listen() queue of connections waiting to be accepted",
}


class RetrievalServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a deep listen backlog, a connection cap and a reaper thread that
    closes connections which have not delivered a whole request within `limits.read_timeout`."""
    daemon_threads = True

    def __init__(self, address, handler, limits: Limits):
        self.limits = limits
        self.request_queue_size = limits.backlog  # read by server_activate's listen()
        self._conns: dict = {}  # handler -> deadline (monotonic), or None while it is searching
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.closed_slow = 0
        super().__init__(address, handler)
        self._reaper = threading.Thread(target=self._reap, name="retrieval-reaper", daemon=True)
        self._reaper.start()

    def register(self, handler) -> bool:
        with self._lock:
            if len(self._conns) >= self.limits.max_connections:
                return False
            self._conns[handler] = None
            return True

    def unregister(self, handler) -> None:
        with self._lock:
            self._conns.pop(handler, None)

    def arm(self, handler) -> None:
        """The handler starts reading a request (or writing a reply): it has read_timeout seconds."""
        with self._lock:
            if handler in self._conns:
                self._conns[handler] = time.monotonic() + self.limits.read_timeout

    def disarm(self, handler) -> None:
        with self._lock:
            if handler in self._conns:
                self._conns[handler] = None

    def _reap(self) -> None:
        while not self._stopping.wait(0.1):
            now = time.monotonic()
            with self._lock:
                late = [h for h, d in self._conns.items() if d is not None and d < now]
                for h in late:
                    self._conns[h] = None
            for h in late:
                h.reaped = True
                self.closed_slow += 1
                log.warning("closed connection from %s: no whole request within %.1f s (a slow or idle client, "
                            "or a Content-Length larger than the body sent)", h.client_address[0],
                            self.limits.read_timeout)
                try:
                    h.connection.shutdown(socket.SHUT_RDWR)  # wakes the handler's blocked read with EOF
                except OSError:
                    pass

    def handle_error(self, request, client_address) -> None:
        """One log line for a connection that failed (client gone, reset), not a traceback."""
        e = sys.exc_info()[1]
        log.warning("connection from %s failed: %s: %s", client_address[0], type(e).__name__, e)

    def server_close(self) -> None:
        self._stopping.set()
        super().server_close()
        self._reaper.join(timeout=2)
