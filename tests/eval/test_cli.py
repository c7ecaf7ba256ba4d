"""`searche1_jax.eval.evaluate`: greedy agent rollouts -> predictions -> report, resumable."""
import json
import os
import types

import numpy as np
import pytest

from searche1_jax.model.checkpoint import smollm2_gguf_path
from searche1_jax.model.tokenizer import Tokenizer
from searche1_jax.rollout.agent import STOP_STRINGS, AgentConfig, SearchAgent
from searche1_jax.rollout.stop import build_stop_automaton, token_bytes_from_tokenizer

from searche1_jax.rollout.scripted import ScriptedPolicy
from tests.rollout.test_agent import ScriptedRetriever

QA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "qa")


@pytest.fixture(scope="module")
def setup():
    if not os.path.isdir(QA):
        pytest.skip("../shared/data/qa is not beside the repository")
    tok = Tokenizer.from_gguf(smollm2_gguf_path())
    # every row searches once, then answers "yes"
    ids = tok.encode("<search> q </search>") + tok.encode("<answer> yes </answer>") + [tok.eos_ids[0]] * 4
    script = np.tile(np.asarray(ids, np.int32), (3, 1))
    stop = build_stop_automaton(list(STOP_STRINGS), token_bytes_from_tokenizer(tok.backend))
    agent = SearchAgent(tok, ScriptedRetriever(), stop, AgentConfig(max_turns=2, topk=1, max_turn_tokens=16,
                                                                    max_response_tokens=200))
    return types.SimpleNamespace(agent=agent), ScriptedPolicy(script, tok.vocab_size)


def test_evaluate_scores_resumes_and_reports(setup, tmp_path):
    from searche1_jax.data.benchmarks import load_benchmark
    from searche1_jax.eval.__main__ import evaluate
    from searche1_jax.rl.rewards import exact_match

    exp, policy = setup
    out = str(tmp_path)
    report, table = evaluate(exp, policy, ["bamboogle", "hotpotqa"], data_dir=QA, split="dev", limit=3,
                             batch=3, out=out, method="scripted", log=lambda *_: None)
    for name in ("bamboogle", "hotpotqa"):
        golds = [ex.golden_answers for ex in load_benchmark(name, QA, "dev", limit=3)]
        expect = np.mean([exact_match("yes", g) for g in golds])
        assert report["benchmarks"][name]["em"] == pytest.approx(expect)
        assert report["benchmarks"][name]["searches"] == pytest.approx(1.0)
    lines = open(os.path.join(out, "predictions.jsonl")).read().splitlines()
    assert len(lines) == 6 and json.loads(lines[0])["prediction"] == "yes"
    assert os.path.exists(os.path.join(out, "report.md")) and "scripted" in table
    # a second run skips every finished example: nothing is added, nothing counted twice
    report2, _ = evaluate(exp, policy, ["bamboogle", "hotpotqa"], data_dir=QA, split="dev", limit=3,
                          batch=3, out=out, method="scripted", log=lambda *_: None)
    assert len(open(os.path.join(out, "predictions.jsonl")).read().splitlines()) == 6
    assert report2["benchmarks"] == report["benchmarks"]


def test_short_last_batch_is_padded_to_the_batch_size(setup, tmp_path):
    from searche1_jax.eval.__main__ import evaluate

    exp, policy = setup
    sizes = []
    run = exp.agent.run

    def counting_run(model, questions, *a, **kw):
        sizes.append(len(questions))
        return run(model, questions, *a, **kw)

    padded = types.SimpleNamespace(agent=types.SimpleNamespace(run=counting_run, cfg=exp.agent.cfg))
    report, _ = evaluate(padded, policy, ["bamboogle"], data_dir=QA, split="dev", limit=4, batch=3,
                         out=str(tmp_path), method="scripted", log=lambda *_: None)
    assert sizes == [3, 3]                      # 4 questions: 3, then 1 padded to 3
    lines = open(os.path.join(str(tmp_path), "predictions.jsonl")).read().splitlines()
    assert len(lines) == 4                      # the padding rows are not scored
    assert len({json.loads(x)["id"] for x in lines}) == 4
    assert report["benchmarks"]["bamboogle"]["n"] == 4
    assert report["reward_text"] == "policy"  # the report names the answer extraction used
