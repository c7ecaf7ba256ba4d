import json

import numpy as np
import pytest

from searche1_jax.retrieval.bm25 import BM25Index
from searche1_jax.retrieval.corpus import Corpus
from tests.retrieval.conftest import CORPUS, VAL


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return Corpus(CORPUS, offsets_file=str(tmp_path_factory.mktemp("off") / "o.npy"))


@pytest.fixture(scope="module")
def bm25(corpus):
    return BM25Index.build(corpus)


def answer_paragraphs():
    """Val questions (not yes/no) with the set of their context paragraphs holding a gold answer."""
    out = []
    with open(VAL) as f:
        for line in f:
            r = json.loads(line)
            answers = [a.lower() for a in r["golden_answers"]]
            if any(a in ("yes", "no") for a in answers):
                continue
            gold = {(c["title"], c["text"]) for c in r["contexts"] if any(a in c["text"].lower() for a in answers)}
            if gold:
                out.append((r["question"], gold))
    return out


def test_bm25_finds_a_gold_paragraph_in_top10_for_multihop_val(bm25, corpus):
    items = answer_paragraphs()
    assert len(items) == 195
    hits = bm25.search([q for q, _ in items], 10)
    found = [any((p.title, p.text) in gold for p in h) for h, (_, gold) in zip(hits, items)]
    rate = sum(found) / len(found)
    # measured 0.631 (123/195) with bm25s 0.3.16, k1=1.5, b=0.75, English stopwords
    assert rate >= 0.60, rate


def test_bm25_known_passage_is_first(bm25):
    [hits] = bm25.search(["Evan Morris lobbyist for Genentech and Roche"], 3)
    assert (hits[0].id, hits[0].title) == ("0", "Evan Morris")
    assert hits[0].score > hits[1].score >= hits[2].score


def test_bm25_save_load_identical(bm25, corpus, tmp_path):
    bm25.save(str(tmp_path))
    loaded = BM25Index.load(str(tmp_path), corpus)
    qs = ["Who founded Genentech?", "capital of Australia", "the of"]
    assert loaded.search(qs, 5) == bm25.search(qs, 5)


def test_bm25_bad_input(bm25):
    with pytest.raises(ValueError, match="empty"):
        bm25.search(["  "], 3)
    with pytest.raises(ValueError, match="topk must be >= 1"):
        bm25.search(["a query"], 0)
    with pytest.raises(ValueError, match="exceeds the 24537 passages"):
        bm25.search(["a query"], 24538)


def test_bm25_query_without_an_indexable_word_gets_no_passages_and_is_counted(bm25):
    from searche1_jax.rollout import protocol as P

    before = bm25.empty_queries
    hits = bm25.search(["?!?!", "Evan Morris lobbyist", "the", "the of and"], 3)
    assert [len(h) for h in hits] == [0, 3, 0, 0]  # not the first corpus rows at score 0
    assert bm25.empty_queries - before == 3
    # what the agent then shows the policy: Search-R1's observation for zero documents
    # (`_passages2string([])` is "", then f"\n\n<information>{''.strip()}</information>\n\n")
    assert P.format_observation(hits[0]) == "\n\n<information></information>\n\n"


def test_bm25_returns_only_passages_that_hold_a_query_word(tmp_path):
    """A word in two passages at k = 3: two hits, as pyserini (Search-R1) returns, not a third
    passage at score 0."""
    rows = [{"id": str(i), "contents": f'"T{i}"\n{text}'} for i, text in enumerate(
        ["the zebulon river floods", "a zebulon bridge", "granite hills", "quiet lakes", "old mills"])]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    hits = BM25Index.build(Corpus(str(path))).search(["zebulon", "granite river"], 3)
    assert [sorted(p.id for p in h) for h in hits] == [["0", "1"], ["0", "2"]]
    assert all(p.score > 0 for h in hits for p in h)


def test_a_burst_with_repeated_queries_equals_bm25s_query_by_query(bm25):
    """Repeated queries are scored once (issue 22); every row must still be what bm25s.retrieve
    gives that query alone (the oracle), in order, repeats and an empty query included."""
    import numpy as np

    from searche1_jax.retrieval.bm25 import _tokenize

    qs = ["Evan Morris lobbyist", "the", "fort in Oman", "Evan Morris lobbyist", "Oman fort in"]
    scores, rows = bm25._search_rows(qs, 4)
    for i, q in enumerate(qs):
        toks = [t for t in _tokenize([q], return_ids=False)[0] if t in bm25.retriever.vocab_dict]
        if not toks:
            assert (rows[i] == -1).all()
            continue
        r, s = bm25.retriever.retrieve([toks], k=4, show_progress=False)
        np.testing.assert_allclose(scores[i], s[0], rtol=1e-6)
        assert rows[i].tolist() == r[0].tolist()
    assert rows[2].tolist() == rows[4].tolist()  # same words in another order: one search


def test_numba_backend_scores_as_numpy_does(bm25, corpus):
    """bm25s's compiled scorer (the server's default) against its numpy one on the 195 val
    questions, top 10: the same scores, and the same passages wherever no two scores tie."""
    from searche1_jax.retrieval.bm25 import BM25Index

    fast = BM25Index(bm25.retriever, corpus, backend="numba")
    assert fast.warm_up() > 0.0
    queries = [q for q, _ in answer_paragraphs()] + ["the of and", "Otbre Wenlum"]  # no indexable word; unseen
    bm25.retriever.backend = "numpy"
    s_np, r_np = bm25._search_rows(queries, 11)  # the 11th tells whether the 10th ties below it
    fast.retriever.backend = "numba"  # one bm25s object: the index's backend is its attribute
    s_nb, r_nb = fast._search_rows(queries, 11)
    bm25.retriever.backend = "numpy"
    np.testing.assert_allclose(s_nb, s_np, rtol=1e-6, atol=0)
    untied = np.ones_like(s_np, bool)
    untied[:, 1:] &= ~np.isclose(s_np[:, 1:], s_np[:, :-1], rtol=1e-6, atol=0)
    untied[:, :-1] &= ~np.isclose(s_np[:, :-1], s_np[:, 1:], rtol=1e-6, atol=0)
    untied = untied[:, :10]
    assert untied.mean() > 0.8
    np.testing.assert_array_equal(r_nb[:, :10][untied], r_np[:, :10][untied])
    assert (r_nb[-2] == -1).all() and (r_np[-2] == -1).all()  # stopwords only: no passages either way


def test_backend_names_are_checked():
    from searche1_jax.retrieval.bm25 import resolve_backend

    with pytest.raises(ValueError, match="unknown BM25 backend 'lucene'.*numpy"):
        resolve_backend("lucene")
    assert resolve_backend("auto") == "numba"  # requirements.txt pins numba
    assert resolve_backend("numpy") == "numpy"
