"""The warm start: the search plan from a question's paragraphs, and trajectories rendered
through the real agent (bytes, loss mask, observations) from the shipped demo data."""
import json
import os

import numpy as np
import pytest

from searche1_jax.config import DEMO_DIR
from searche1_jax.data.qa import read_examples
from searche1_jax.model.checkpoint import smollm2_gguf_path
from searche1_jax.model.tokenizer import Tokenizer
from searche1_jax.retrieval.bm25 import BM25Index
from searche1_jax.retrieval.corpus import Corpus
from searche1_jax.rollout import protocol as P
from searche1_jax.rollout.agent import STOP_STRINGS, AgentConfig, SearchAgent
from searche1_jax.rollout.stop import build_stop_automaton, token_bytes_from_tokenizer
from searche1_jax.train.batching import pack_trajectories
from searche1_jax.train.warm_start import build_warm_start, load_contexts, plan_searches, script_turns

PARAS = [("Jaws (film)", "Jaws is a 1975 film directed by Steven Spielberg."),
         ("Steven Spielberg", "Steven Spielberg was born in Cincinnati, Ohio."),
         ("Duel (1971 film)", "Duel is a television film."),
         ("Cincinnati", "Cincinnati is a city in Ohio.")]


@pytest.mark.parametrize("question,golds,k,want", [
    # names one title; the answer sits in another paragraph (the bridge): both, named first
    ("Where was the director of Jaws (film) born?", ["Cincinnati"], 2, ["Jaws (film)", "Steven Spielberg"]),
    # only one search allowed: the answer's paragraph is kept
    ("Where was the director of Jaws (film) born?", ["Cincinnati"], 1, ["Steven Spielberg"]),
    # two named titles, in the question's order; yes/no: no answer paragraph
    ("Were Duel (1971 film) and Jaws (film) made by one man?", ["yes"], 3, ["Duel (1971 film)", "Jaws (film)"]),
    # nothing named, no answer paragraph: the question itself
    ("Who knows?", ["nobody"], 2, ["Who knows?"]),
])
def test_plan_searches(question, golds, k, want):
    assert plan_searches(question, golds, PARAS, k) == want


def test_script_turns_follow_the_protocol():
    turns = script_turns(["a", "b"], "Paris")
    assert turns[0] == "<think> I need to find a. </think>\n<search> a </search>"
    assert turns[-1] == "<think> I have what I need. </think>\n<answer> Paris </answer>"
    assert all(P.parse_action(t).kind == P.SEARCH for t in turns[:-1])
    assert P.is_valid_format("".join(t + (P.format_observation([]) if i < 2 else "") for i, t in enumerate(turns)))


def test_rendered_trajectories_are_agent_trajectories():
    tok = Tokenizer.from_gguf(smollm2_gguf_path())
    corpus_path = os.path.join(DEMO_DIR, "corpus.jsonl")
    corpus = Corpus(corpus_path)
    rows = {corpus.record(r)[0]: r for r in range(len(corpus))}
    retriever = BM25Index.build(corpus)
    stop = build_stop_automaton(list(STOP_STRINGS), token_bytes_from_tokenizer(tok.backend))
    agent = SearchAgent(tok, retriever, stop, AgentConfig(max_turns=2, topk=3, max_turn_tokens=64,
                                                          max_obs_tokens=160, max_response_tokens=448))
    examples = read_examples(os.path.join(DEMO_DIR, "train.jsonl"))[:12]
    contexts = load_contexts(os.path.join(DEMO_DIR, "contexts.json"))
    trajs = build_warm_start(agent, tok, examples, contexts, lambda pid: corpus.record(rows[pid])[1],
                             max_searches=2, log=lambda *_: None)
    assert len(trajs) >= 10
    for t in trajs:
        assert t.finish_reason == "answer" and 1 <= t.num_searches <= 2
        # the policy's turns are the script, the observations the retriever's, byte for byte
        want = ""
        for q in t.queries:
            want += f"<think> I need to find {q}. </think>\n<search> {q} </search>"
            want += tok.decode(tok.encode(P.format_observation(retriever.search([q], 3)[0]))[:160])
        want += f"<think> I have what I need. </think>\n<answer> {t.answer} </answer>"
        assert tok.decode(t.response_ids) == want
        sampled = tok.decode([i for i, m in zip(t.response_ids, t.loss_mask) if m])
        assert P.INFO_OPEN not in sampled and sampled.endswith(f"<answer> {t.answer} </answer>")
    golds = {ex.golden_answers[0] for ex in examples}
    assert all(t.answer in golds for t in trajs)
    arrays = pack_trajectories(trajs, length_bucket=128, rows_multiple=4, pad_id=tok.pad_id)
    assert arrays["tokens"].shape[0] % 4 == 0 and arrays["tokens"].shape[1] % 128 == 0
    n = len(trajs)
    np.testing.assert_array_equal(arrays["loss_mask"][:n].sum(1), [sum(t.loss_mask) for t in trajs])
    assert arrays["loss_mask"][n:].sum() == 0


def test_contexts_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.sft.contexts"):
        load_contexts(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="expected a JSON object"):
        load_contexts(str(bad))
