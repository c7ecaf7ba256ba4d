"""Interop with Search-R1 both ways (issue 22, item 4).

Oracle: Search-R1's documented schema (PeterGriffinJin/Search-R1, search_r1/search/retrieval_server.py
and search_r1/llm_agent/generation.py), written out here from the schema, not imported:
- request  POST /retrieve {"queries": [...], "topk": k, "return_scores": true}
- reply    {"result": [[{"document": doc, "score": s}, ...], ...]}, or [[doc, ...], ...] when
           return_scores is false; the dense server's doc is the corpus row {"id", "contents"},
           the BM25 server's is {"title": first line without quotes, "text": the rest,
           "contents"} with no id;
- the agent reads only doc["contents"]: title = its first line (quotes kept), text = the rest,
  and writes "Doc {i}(Title: {title}) {text}\\n" per passage.
The passages themselves are checked against the corpus file read line by line with json.
"""
import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from searche1_jax.retrieval.bm25 import BM25Index
from searche1_jax.retrieval.client import RetrievalClient, RetrieverError
from searche1_jax.retrieval.corpus import Corpus
from searche1_jax.retrieval.serve import make_server

QUERIES = ["Evan Morris lobbyist", "Horatio Hale ethnologist", "a fort in Oman"]


def corpus_rows(path) -> dict[str, str]:
    """id -> contents, straight from the jsonl file (the oracle for every passage)."""
    with open(path) as f:
        return {str(r["id"]): r["contents"] for r in map(json.loads, f) if r}


def search_r1_agent_search(url: str, queries: list[str], topk: int = 3) -> list[str]:
    """What Search-R1's agent does with a retrieval server: one POST, then its passage string."""
    body = json.dumps({"queries": queries, "topk": topk, "return_scores": True}).encode()
    req = urllib.request.Request(url + "/retrieve", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        result = json.loads(r.read())["result"]
    out = []
    for row in result:
        s = ""
        for i, item in enumerate(row):
            lines = item["document"]["contents"].split("\n")
            s += f"Doc {i + 1}(Title: {lines[0]}) {chr(10).join(lines[1:])}\n"
        out.append(s)
    return out


@pytest.fixture(scope="module")
def ours(small_corpus_path):
    index = BM25Index.build(Corpus(small_corpus_path))
    server, batcher = make_server(index, "127.0.0.1", 0, max_wait_ms=1.0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield index, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    batcher.close()
    thread.join(timeout=5)


def test_search_r1s_agent_reads_our_server(ours, small_corpus_path):
    index, url = ours
    rows = corpus_rows(small_corpus_path)
    got = search_r1_agent_search(url, QUERIES)
    for text, hits in zip(got, index.search(QUERIES, 3)):
        assert hits, "each query should match something in the 300 passages"
        want = "".join(f"Doc {i + 1}(Title: {rows[p.id].split(chr(10))[0]}) "
                       f"{rows[p.id].split(chr(10), 1)[1]}\n" for i, p in enumerate(hits))
        assert text == want
        assert text.startswith('Doc 1(Title: "')  # the title as stored, quotes kept


class SearchR1Server:
    """A loopback server that speaks only Search-R1's schema: it answers from `rows` in the BM25
    shape (title/text/contents, no id) or the dense one (id/contents), and records what it got."""

    def __init__(self, rows: dict[str, str], hits_for, shape: str):
        self.requests = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(req)
                result = []
                for q in req["queries"]:
                    row = []
                    for pid, score in hits_for(q)[:req["topk"]]:
                        c = rows[pid]
                        doc = ({"title": c.split("\n")[0].strip('"'), "text": "\n".join(c.split("\n")[1:]),
                                "contents": c} if shape == "bm25" else {"id": pid, "contents": c})
                        row.append({"document": doc, "score": score} if req["return_scores"] else doc)
                    result.append(row)
                data = json.dumps({"result": result}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.mark.parametrize("shape", ["bm25", "dense"])
def test_our_client_reads_search_r1s_servers(small_corpus_path, shape):
    rows = corpus_rows(small_corpus_path)
    ids = sorted(rows, key=int)
    hits_for = lambda q: [(ids[len(q) % 7], 9.5), (ids[3], 4.25), (ids[11], 1.0)]  # noqa: E731
    srv = SearchR1Server(rows, hits_for, shape)
    try:
        got = RetrievalClient(srv.url, retries=0).search(QUERIES, 3)
    finally:
        srv.close()
    assert srv.requests == [{"queries": QUERIES, "topk": 3, "return_scores": True}]
    for q, hits in zip(QUERIES, got):
        want = hits_for(q)
        assert [p.score for p in hits] == [s for _, s in want]
        for p, (pid, _) in zip(hits, want):
            title_line, text = rows[pid].split("\n", 1)
            assert (p.title, p.text) == (title_line.strip('"'), text)
            assert p.contents == rows[pid]
            assert p.id == ("" if shape == "bm25" else pid)  # Search-R1's BM25 documents carry no id


def test_our_server_through_our_client_and_back_through_search_r1s(ours, small_corpus_path):
    """Ours -> ours equals in-process search; the same passages served in Search-R1's BM25 shape
    come back through our client with the same titles, texts and scores."""
    index, url = ours
    direct = index.search(QUERIES, 3)
    assert RetrievalClient(url).search(QUERIES, 3) == direct
    by_query = {q: [(p.id, p.score) for p in hits] for q, hits in zip(QUERIES, direct)}
    srv = SearchR1Server(corpus_rows(small_corpus_path), by_query.__getitem__, "bm25")
    try:
        back = RetrievalClient(srv.url, retries=0).search(QUERIES, 3)
    finally:
        srv.close()
    assert [[(p.title, p.text, p.score) for p in h] for h in back] == \
        [[(p.title, p.text, p.score) for p in h] for h in direct]


@pytest.mark.parametrize("doc,err,msg", [
    ({"title": "T"}, KeyError, "text"),
    ({"id": "1"}, KeyError, "title"),
    ({"title": 3, "text": "x"}, TypeError, "title and text must be strings"),
    ("a string", TypeError, "document must be an object"),
])
def test_a_document_in_neither_schema_is_refused(doc, err, msg):
    from searche1_jax.retrieval.client import passage_of

    with pytest.raises(err, match=msg):
        passage_of({"document": doc, "score": 1.0})


def test_the_client_error_names_both_schemas():
    from tests.retrieval.test_client import Scripted, answer

    s = Scripted(answer(json.dumps({"result": [[{"document": {"title": "T"}, "score": 1}]]}).encode()))
    try:
        with pytest.raises(RetrieverError, match=r"Search-R1 dense.*Search-R1 BM25.*KeyError: 'text'"):
            RetrievalClient(s.url, retries=0).search(["a"], 3)
    finally:
        s.close()
