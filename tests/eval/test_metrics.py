import json

import numpy as np
import pytest

from searche1_jax.data.benchmarks import BENCHMARKS, load_benchmark
from searche1_jax.eval.metrics import (PredictionLog, aggregate, average_over_benchmarks, batch_metrics,
                                       bootstrap_ci, build_report, em_table, markdown_report, read_predictions,
                                       score_example, write_json_report, write_markdown_report)
from tests.data.shared import SHARED_DATA, needs_shared


def _rec(bench, i, em, f1, cover, searches, length):
    return {"benchmark": bench, "id": f"{bench}-{i}", "em": em, "f1": f1, "cover_em": cover,
            "searches": searches, "length": length}


# Hand-computed table. nq: EM (1+0+0+1)/4, F1 (1+.5+0+1)/4, cover 3/4, searches 6/4, length 100/4.
# popqa: EM 1/2, F1 1.2/2, cover 1/2, searches 4/2, length 150/2.
NQ = [_rec("nq", 0, 1, 1.0, 1, 1, 10), _rec("nq", 1, 0, 0.5, 1, 2, 20),
      _rec("nq", 2, 0, 0.0, 0, 0, 30), _rec("nq", 3, 1, 1.0, 1, 3, 40)]
POPQA = [_rec("popqa", 0, 0, 0.2, 0, 4, 100), _rec("popqa", 1, 1, 1.0, 1, 0, 50)]
TABLE = {"nq": {"n": 4, "em": 0.5, "f1": 0.625, "cover_em": 0.75, "searches": 1.5, "length": 25.0},
         "popqa": {"n": 2, "em": 0.5, "f1": 0.6, "cover_em": 0.5, "searches": 2.0, "length": 75.0}}
# plain mean over the two benchmarks (not the pooled mean over 6 examples: F1 pooled would be .6167)
AVERAGE = {"em": 0.5, "f1": 0.6125, "cover_em": 0.625, "searches": 1.75, "length": 50.0}


def test_aggregation_matches_hand_computed_table():
    per = aggregate(POPQA + NQ)
    assert list(per) == ["nq", "popqa"]  # METHOD §5 order, whatever the record order
    for b in TABLE:
        assert per[b] == pytest.approx(TABLE[b])
    assert average_over_benchmarks(per) == pytest.approx(AVERAGE)


def test_duplicate_records_count_once():
    per = aggregate(NQ + [dict(NQ[1], em=1, f1=1.0)] + POPQA)
    assert per["nq"] == pytest.approx(TABLE["nq"])


def test_asking_for_a_benchmark_without_records_is_an_error():
    with pytest.raises(ValueError, match="no prediction records for benchmark 'musique'"):
        aggregate(NQ, benchmarks=["nq", "musique"])


def test_bootstrap_interval():
    assert bootstrap_ci([0.7] * 30) == pytest.approx((0.7, 0.7))
    rng = np.random.default_rng(1)
    x = (rng.random(400) < 0.5).astype(float)
    lo, hi = bootstrap_ci(x, n_resamples=2000, seed=3)
    assert (lo, hi) == bootstrap_ci(x, n_resamples=2000, seed=3)   # seeded
    assert (lo, hi) != bootstrap_ci(x, n_resamples=2000, seed=4)
    assert lo < x.mean() < hi
    # normal approximation: half-width 1.96 * sqrt(p(1-p)/n) ~= 0.049
    half = 1.96 * np.sqrt(x.mean() * (1 - x.mean()) / len(x))
    assert abs((hi - lo) / 2 - half) < 0.006


def test_report_carries_table_intervals_and_published_rows():
    report = build_report(NQ + POPQA, method="ours", n_resamples=500, seed=0, checkpoint="ckpt/7")
    assert report["checkpoint"] == "ckpt/7" and report["n_benchmarks"] == 2
    for b in TABLE:
        s = report["benchmarks"][b]
        assert {k: s[k] for k in TABLE[b]} == pytest.approx(TABLE[b])
        lo, hi = s["em_ci"]
        assert 0 <= lo <= s["em"] <= hi <= 1
    assert report["average"]["em"] == pytest.approx(0.5)
    assert report["published"][2]["em"]["nq"] == 0.421
    # one benchmark: the average's interval is that benchmark's interval (same resamples)
    one = build_report(NQ, n_resamples=500, seed=0)
    assert one["average"]["f1_ci"] == one["benchmarks"]["nq"]["f1_ci"]


def test_em_table_has_method_section_5_layout():
    report = build_report(NQ + POPQA, method="ours", n_resamples=100)
    lines = em_table(report).split("\n")
    assert lines[0] == "| Method | NQ | TQA | PopQA | HotpotQA | 2Wiki | Musique | Bamboogle | Avg |"
    assert lines[2] == "| ours | 0.500 | – | 0.500 | – | – | – | – | 0.500 (2/7) |"
    assert ("| Search-R1 GRPO base (published) | 0.421 | 0.583 | 0.413 | 0.297 | 0.274 | 0.066 | 0.128 "
            "| 0.312 |") in lines
    assert "| Search-E1 (published) | – | – | – | – | – | – | – | 0.440 |" in lines
    md = markdown_report(report)
    assert "| NQ | 4 | 0.500 [" in md and "| 1.50 | 25.0 |" in md


def test_report_writers(tmp_path):
    report = build_report(NQ + POPQA, n_resamples=100)
    write_json_report(report, tmp_path / "out" / "report.json")
    with open(tmp_path / "out" / "report.json") as f:
        assert json.load(f) == json.loads(json.dumps(report))
    write_markdown_report(report, tmp_path / "out" / "report.md")
    assert (tmp_path / "out" / "report.md").read_text() == markdown_report(report)


# ---- scalar metrics come from searche1_jax.rl.rewards ----

def test_score_example_uses_the_last_answer_span():
    text = ("<think>hm</think><answer> Paris </answer> wait <search>q</search> "
            "<answer>the Eiffel Tower in Paris</answer>")
    rec = score_example("nq", "nq-1", "where?", ["Eiffel Tower"], text, searches=1, length=42, turns=2)
    assert rec["prediction"].strip() == "the Eiffel Tower in Paris"
    # normalised prediction tokens: eiffel tower in paris; gold: eiffel tower
    # precision 2/4, recall 2/2 -> F1 = 2 * .5 * 1 / 1.5 = 2/3; EM 0; gold contained -> cover-EM 1
    assert (rec["em"], rec["cover_em"]) == (0.0, 1.0)
    assert rec["f1"] == pytest.approx(2 / 3)
    assert (rec["searches"], rec["length"], rec["turns"]) == (1, 42, 2)
    none = score_example("nq", "nq-2", "q", ["x"], "<think>no answer</think>", searches=4, length=9)
    assert none["prediction"] is None and (none["em"], none["f1"], none["cover_em"]) == (0.0, 0.0, 0.0)
    assert score_example("nq", "nq-3", "q", ["The Beatles"], "<answer>beatles!</answer>", 0, 1)["em"] == 1.0


def test_batch_metrics():
    m = batch_metrics(["<search>q</search><information>d</information><answer>new york city</answer>",
                       "nothing"], [["new york"], ["x"]])
    np.testing.assert_allclose(m["em"], [0, 0])
    np.testing.assert_allclose(m["f1"], [0.8, 0], rtol=1e-6)
    np.testing.assert_allclose(m["cover_em"], [1, 0])
    np.testing.assert_allclose(m["num_searches"], [1, 0])
    np.testing.assert_allclose(m["valid_format"], [1, 0])


# ---- resumable predictions ----

class _Ex:
    def __init__(self, i, golds):
        self.id, self.question, self.golden_answers = f"q{i}", f"question {i}", golds


def _scripted_policy(calls):
    def policy(ex):  # right on even ids, wrong on odd ones
        calls.append(ex.id)
        i = int(ex.id[1:])
        return f"<answer>{ex.golden_answers[0] if i % 2 == 0 else 'wrong'}</answer>", i % 3, 10 + i
    return policy


def _evaluate(log, bench, examples, policy, crash_after=None):
    for k, ex in enumerate(log.pending(bench, examples)):
        if crash_after is not None and k == crash_after:
            with open(log.path, "a") as f:  # killed in the middle of writing a record
                f.write('{"benchmark": "' + bench + '", "id": "' + ex.id + '", "em": 1')
            raise KeyboardInterrupt
        text, searches, length = policy(ex)
        log.append(score_example(bench, ex.id, ex.question, ex.golden_answers, text, searches, length))


def test_resumed_evaluation_does_not_double_count(tmp_path):
    examples = [_Ex(i, [f"ans {i}"]) for i in range(9)]
    full_calls = []
    full = PredictionLog(tmp_path / "full.jsonl")
    _evaluate(full, "nq", examples, _scripted_policy(full_calls))

    calls = []
    path = tmp_path / "run" / "predictions.jsonl"
    with pytest.raises(KeyboardInterrupt):
        _evaluate(PredictionLog(path), "nq", examples, _scripted_policy(calls), crash_after=4)
    assert len(read_predictions(path)) == 4           # the torn 5th line is not a record
    resumed = PredictionLog(path)
    assert len(resumed.done) == 4 and resumed.is_done("nq", "q3") and not resumed.is_done("nq", "q4")
    _evaluate(resumed, "nq", examples, _scripted_policy(calls))
    _evaluate(PredictionLog(path), "nq", examples, _scripted_policy(calls))  # a third run has nothing to do
    assert calls == full_calls == [f"q{i}" for i in range(9)]  # every example rolled out exactly once
    assert resumed.append(read_predictions(path)[0]) is False   # an already-finished key is not re-written

    recs = read_predictions(path)
    with open(path) as f:
        assert sum(1 for _ in f) == 9
    assert aggregate(recs)["nq"] == aggregate(read_predictions(tmp_path / "full.jsonl"))["nq"]
    assert aggregate(recs)["nq"]["n"] == 9 and aggregate(recs)["nq"]["em"] == pytest.approx(5 / 9)


def test_a_record_counts_only_once_its_newline_is_written(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(NQ[0]) + "\n" + json.dumps(NQ[1]))  # killed before the newline
    assert [r["id"] for r in read_predictions(path)] == ["nq-0"]
    log = PredictionLog(path)                                       # drops the torn tail
    assert log.done == {("nq", "nq-0")} and path.read_text() == json.dumps(NQ[0]) + "\n"
    assert log.append(NQ[1]) and [r["id"] for r in read_predictions(path)] == ["nq-0", "nq-1"]


def test_bad_record_in_the_middle_names_file_and_line(tmp_path):
    path = tmp_path / "p.jsonl"
    good = json.dumps(_rec("nq", 0, 1, 1.0, 1, 0, 3))
    path.write_text(good + "\n{oops\n" + good + "\n")
    with pytest.raises(ValueError, match=rf"{path}:2: not a JSON prediction record"):
        read_predictions(path)
    path.write_text(good + "\n" + json.dumps({"benchmark": "nq", "id": "x"}) + "\n")
    with pytest.raises(ValueError, match=rf"{path}:2: prediction record lacks \['em'"):
        read_predictions(path)


# ---- a scripted policy on the shared dev slices gives exactly the expected numbers ----

@needs_shared
def test_scripted_policies_on_shared_dev_slices(tmp_path):
    records, yes_records = [], []
    expected_yes, no_token_gold = {}, {}
    for b in BENCHMARKS:
        exs = load_benchmark(b, SHARED_DATA)
        for ex in exs:
            # oracle: answers the first gold with an article and odd spacing -> EM = F1 = cover = 1
            records.append(score_example(b, ex.id, ex.question, ex.golden_answers,
                                         f"<search> x </search><answer>  The {ex.golden_answers[0]} </answer>", 1, 5))
            yes_records.append(score_example(b, ex.id, ex.question, ex.golden_answers, "<answer>Yes</answer>", 0, 2))
        # independent oracle: "yes" is right iff some gold is literally yes (up to case/space/punct)
        # golds like '---' or ')' have no token after normalisation: their F1 is 0 or 1 by convention
        no_token_gold[b] = sum(not any(c.isalnum() for g in ex.golden_answers for c in g) for ex in exs)
        expected_yes[b] = np.mean([any(g.strip(" .").lower() == "yes" for g in ex.golden_answers) for ex in exs])
    report = build_report(records, n_resamples=200)
    assert report["n_benchmarks"] == 7
    for b in BENCHMARKS:
        s = report["benchmarks"][b]
        assert (s["em"], s["cover_em"], s["searches"], s["length"]) == (1.0, 1.0, 1.0, 5.0)
        assert s["f1"] in (1.0, pytest.approx(1.0 - no_token_gold[b] / s["n"])), b
    assert no_token_gold["nq"] == 2 and sum(no_token_gold.values()) == 2
    assert report["benchmarks"]["musique"]["n"] == 80 and report["benchmarks"]["bamboogle"]["n"] == 50
    per = aggregate(yes_records)
    assert {b: per[b]["em"] for b in BENCHMARKS} == pytest.approx(expected_yes)
    assert per["hotpotqa"]["em"] > 0.05 and per["nq"]["em"] == 0.0
    assert average_over_benchmarks(per)["em"] == pytest.approx(np.mean(list(expected_yes.values())))
