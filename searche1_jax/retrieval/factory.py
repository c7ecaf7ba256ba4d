"""`build_retriever(r)`: the search engine a config's retrieval section names, chosen by `r.kind`.

    build_retriever(r) -> Index | RetrievalClient     r: config.retrieval (typed or ConfigDict)

kind="bm25"   r.index: a BM25 index directory, or r.corpus: a corpus jsonl indexed in memory
kind="exact"  r.index: a directory built by `python -m searche1_jax.retrieval.build --index exact`
kind="scann"  r.index: a directory built by `python -m searche1_jax.retrieval.build --index scann`
kind="http"   r.url: a Search-R1-compatible retrieval service (`retrieval/serve.py`)

    check_service(r) -> dict   kind="http": the service's GET /health, asked when a run starts
                               (before the model is built), not at the first search

An index directory's manifest states its kind; a directory of another kind is refused (a scann
config never silently searches an exact or BM25 index). Errors name the field and the fix.
"""
from __future__ import annotations

from searche1_jax.retrieval.store import KINDS, load_index, read_manifest

BUILD = "python -m searche1_jax.retrieval.build --corpus FILE --encoder {encoder} --index {kind} --out DIR"


def _encoder_arg(kind: str) -> str:
    return "bm25" if kind == "bm25" else "HF_ENCODER_DIR"


def load_index_of_kind(directory: str, kind: str, *, encoder=None, bm25_backend: str = "numpy"):
    """Open the index at `directory`, which must hold a `kind` index (config.retrieval.index)."""
    try:
        manifest = read_manifest(directory)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"config.retrieval.index: {e}") from None
    except ValueError as e:
        raise ValueError(f"config.retrieval.index: {e}") from None
    if manifest["kind"] != kind:
        raise ValueError(f"config.retrieval.index {directory!r} holds a {manifest['kind']!r} index but "
                         f"config.retrieval.kind is {kind!r}: set config.retrieval.kind="
                         f"{manifest['kind']!r}, or point config.retrieval.index at a {kind} index ("
                         + BUILD.format(encoder=_encoder_arg(kind), kind=kind) + ")")
    return load_index(directory, encoder=encoder, bm25_backend=bm25_backend)


def _http_client(r, **kw):
    """The client of config.retrieval.url (its form checked by the client, the field named)."""
    if not r.url:
        raise ValueError("config.retrieval.kind='http' needs config.retrieval.url, e.g. http://127.0.0.1:8000 "
                         "(a server started by python -m searche1_jax.retrieval.serve)")
    from searche1_jax.retrieval.client import RetrievalClient
    try:
        return RetrievalClient(r.url, **kw)
    except ValueError as e:  # the client checks the URL's form (scheme and host)
        raise ValueError(f"config.retrieval.url: {e}") from None


def check_service(r, *, num_passages: int | None = None, timeout: float = 10.0, retries: int = 2) -> dict:
    """Ask the kind="http" service at config.retrieval.url for GET /health: its answer
    ({"status": "ok", "kind", "num_passages"}). A service that does not answer raises
    RetrieverDownError naming the URL and how to start one; one that answers but is not ok, or
    serves another number of passages than `num_passages` (when known), raises ValueError."""
    from searche1_jax.retrieval.client import RetrieverDownError
    client = _http_client(r, timeout=timeout, retries=retries, backoff=0.5)
    try:
        health = client.health()
    except ValueError as e:  # HTTP 4xx: something answers there, but not our /health
        raise RetrieverDownError(f"config.retrieval.url {r.url} answers, but not GET /health ({e}); start "
                                 f"a service with python -m searche1_jax.retrieval.serve --index DIR") from None
    if not isinstance(health, dict) or health.get("status") != "ok":
        raise ValueError(f"retrieval service at config.retrieval.url {r.url} is not ready: /health said {health!r}")
    if num_passages is not None and health.get("num_passages") != num_passages:
        raise ValueError(f"retrieval service at config.retrieval.url {r.url} serves {health.get('num_passages')} "
                         f"passages, this run expects {num_passages}: is it serving the right index?")
    return health


def build_retriever(r, *, encoder=None):
    """The retriever config.retrieval `r` names (see module docstring). `encoder` overrides the
    query encoder a dense index's manifest names."""
    kind = r.kind
    if kind == "http":
        return _http_client(r, timeout=r.timeout, deadline=r.deadline, max_queries=r.max_queries)
    if kind not in KINDS:
        raise ValueError(f"config.retrieval.kind must be one of {(*KINDS, 'http')}, got {kind!r}")
    if kind == "bm25" and not r.index:
        if not r.corpus:
            raise ValueError("config.retrieval.kind='bm25' needs config.retrieval.corpus (a corpus jsonl, "
                             "indexed in memory) or config.retrieval.index (a directory built by "
                             + BUILD.format(encoder="bm25", kind="bm25") + ")")
        from searche1_jax.retrieval.bm25 import BM25Index
        from searche1_jax.retrieval.corpus import Corpus
        return BM25Index.build(Corpus(r.corpus), backend=r.bm25_backend)
    if not r.index:
        raise ValueError(f"config.retrieval.kind={kind!r} needs config.retrieval.index: a directory built by "
                         + BUILD.format(encoder=_encoder_arg(kind), kind=kind))
    return load_index_of_kind(r.index, kind, encoder=encoder, bm25_backend=r.bm25_backend)
