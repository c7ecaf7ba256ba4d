import json
import os

import numpy as np
import pytest

from searche1_jax.retrieval.corpus import (Corpus, CorpusFormatError, iter_passages, join_contents,
                                           offsets_path, split_contents)
from tests.retrieval.conftest import CORPUS


def test_random_access_matches_plain_json_reading(small_corpus_path):
    with open(small_corpus_path) as f:
        rows = [json.loads(line) for line in f]
    corpus = Corpus(small_corpus_path)
    assert len(corpus) == len(rows) == 300
    for i in (0, 1, 150, 299):
        pid, title, text = corpus.passage(i)
        assert pid == rows[i]["id"]
        assert join_contents(title, text) == rows[i]["contents"]
        assert corpus.record(i) == (rows[i]["id"], rows[i]["contents"])
    assert corpus.offsets.dtype == np.int64 and corpus.offsets.shape == (300, 2)


def test_offsets_are_saved_beside_the_file_and_reused(small_corpus_path):
    Corpus(small_corpus_path)
    saved = offsets_path(os.path.abspath(small_corpus_path))
    assert os.path.exists(saved)
    np.testing.assert_array_equal(np.load(saved), Corpus(small_corpus_path).offsets)


def test_full_shared_corpus_row_count_and_streaming_agree(tmp_path):
    corpus = Corpus(CORPUS, offsets_file=str(tmp_path / "o.npy"))  # never write into shared/
    n = sum(1 for _ in iter_passages(CORPUS))
    assert n == len(corpus) == 24537
    assert corpus.passage(n - 1) == list(iter_passages(CORPUS))[-1][1]
    assert corpus.passage(0)[:2] == ("0", "Evan Morris")


def test_split_contents_strips_one_pair_of_title_quotes():
    assert split_contents('"Evan Morris"\nEvan L. Morris was') == ("Evan Morris", "Evan L. Morris was")
    assert split_contents('"A "quoted" b"\nx\ny') == ('A "quoted" b', "x\ny")
    assert split_contents("NoQuotes\ntext") == ("NoQuotes", "text")
    assert join_contents(*split_contents('"T"\nline1\nline2')) == '"T"\nline1\nline2'


def test_blank_lines_are_skipped_and_rows_stay_dense(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"id": "7", "contents": "\\"A\\"\\na"}\n\n{"id": "9", "contents": "\\"B\\"\\nb"}\n')
    corpus = Corpus(str(p))
    assert len(corpus) == 2 and corpus.passage(1) == ("9", "B", "b")
    with pytest.raises(IndexError, match="out of range"):
        corpus.passage(2)


def test_invalid_json_line_is_reported_with_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"id": "0", "contents": "\\"A\\"\\na"}\n{"id": "1", "contents": \n')
    with pytest.raises(CorpusFormatError, match=rf"{p}:2: not valid JSON"):
        Corpus(str(p))
    with pytest.raises(CorpusFormatError, match=rf"{p}:2:"):
        list(iter_passages(str(p)))


def test_line_without_contents_is_reported(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"id": "0", "text": "x"}\n')
    with pytest.raises(CorpusFormatError, match=r"bad.jsonl:1: .*'id' and 'contents'"):
        Corpus(str(p))


def test_missing_corpus_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="wiki-18 jsonl"):
        Corpus(str(tmp_path / "nope.jsonl"))


def test_many_passages_at_once_match_plain_json_reading(small_corpus_path):
    with open(small_corpus_path) as f:
        want = [json.loads(line) for line in f]
    c = Corpus(small_corpus_path)
    rows = [5, 0, 299, 5, 17]
    got = c.passages(rows)
    assert sorted(got) == [0, 5, 17, 299]
    for r in rows:
        assert got[r] == (want[r]["id"], *split_contents(want[r]["contents"])) == c.passage(r)
    assert c.passages([]) == {}


def test_a_bad_line_among_many_is_named(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"id": "0", "contents": "\\"A\\"\\nx"}\n{"id": "1", "contents": "\\"B\\"\\ny"}\n')
    c = Corpus(str(p))
    with open(p, "w") as f:  # same byte lengths, second line broken after the offsets were taken
        f.write('{"id": "0", "contents": "\\"A\\"\\nx"}\n{"id": "1", "kontents": "\\"B\\"\\ny"}\n')
    with pytest.raises(CorpusFormatError, match="needs keys 'id' and 'contents'"):
        c.passages([0, 1])
