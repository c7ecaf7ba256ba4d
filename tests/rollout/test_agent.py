"""The multi-turn agent driven by a scripted retriever and a forced-token policy."""
import dataclasses

import jax
import numpy as np
import pytest

from searche1_jax.model.checkpoint import smollm2_gguf_path
from searche1_jax.model.tokenizer import Tokenizer
from searche1_jax.rollout import protocol as P
from searche1_jax.rollout.agent import STOP_STRINGS, AgentConfig, SearchAgent
from searche1_jax.rollout.scripted import ScriptedPolicy
from searche1_jax.rollout.sampler import SamplingParams
from searche1_jax.rollout.stop import build_stop_automaton, token_bytes_from_tokenizer
from searche1_jax.retrieval.index import Passage


class ScriptedRetriever:
    def __init__(self):
        self.calls = []

    def search(self, queries, k):
        self.calls.append(list(queries))
        return [[Passage(str(i), f"T{q}{i}", f"text about {q} number {i}", 1.0 / (i + 1)) for i in range(k)]
                for q in queries]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_gguf(smollm2_gguf_path())


SEGMENTS = {
    # row: sampled segments, one per turn
    0: ["<think> need facts </think>\n<search> alpha </search>", "<think> ok </think>\n<answer> Paris </answer>"],
    1: ["<answer> yes </answer>"],
    2: ["I do not know.", "<search>beta</search>", "<search> gamma </search>", "<answer>x</answer>"],
    3: ["<search> d1 </search>", "<search> d2 </search>", "x<search> d3 </search> then <answer> z </answer>"],
}


def pieces(tok, t):
    """A trajectory's response as (text, sampled) runs of its loss mask."""
    out, cur, cur_m = [], [], None
    for tid, m in zip(t.response_ids, t.loss_mask):
        if m != cur_m and cur:
            out.append((tok.decode(cur), cur_m))
            cur = []
        cur.append(tid)
        cur_m = m
    return out + ([(tok.decode(cur), cur_m)] if cur else [])


def build(tok, max_turns, segments=SEGMENTS):
    eos = tok.eos_ids[0]
    rows = []
    for r in range(len(segments)):
        ids = []
        for seg in segments[r]:
            ids += tok.encode(seg)
            if seg == "I do not know.":
                ids.append(eos)  # EOS without a tag: an invalid action
        rows.append(ids + [eos] * 8)
    width = max(len(x) for x in rows)
    script = np.full((len(rows), width), eos, np.int32)
    for r, ids in enumerate(rows):
        script[r, :len(ids)] = ids
    stop = build_stop_automaton(list(STOP_STRINGS), token_bytes_from_tokenizer(tok.backend))
    retriever = ScriptedRetriever()
    agent = SearchAgent(tok, retriever, stop, AgentConfig(max_turns=max_turns, topk=2, max_turn_tokens=48,
                                                          max_response_tokens=900))
    return ScriptedPolicy(script, tok.vocab_size), agent, retriever


def test_pause_resume_observations_and_loss_mask(tok):
    policy, agent, retriever = build(tok, max_turns=3)
    trajs = agent.run(policy, ["q0", "q1", "q2", "q3"], jax.random.key(0), SamplingParams(greedy=True))
    # retrieval batched across rows paused in the same turn, in row order
    assert retriever.calls == [["alpha", "d1"], ["beta", "d2"], ["gamma", "d3"]]
    assert [t.num_searches for t in trajs] == [1, 0, 2, 3]
    assert [t.finish_reason for t in trajs] == ["answer", "answer", "answer", "answer"]
    assert [t.answer for t in trajs] == ["Paris", "yes", "x", "z"]

    def expected(r):
        obs = lambda q: P.format_observation(retriever.search([q], 2)[0])  # noqa: E731
        if r == 0:
            return [(SEGMENTS[0][0], 1), (obs("alpha"), 0), (SEGMENTS[0][1], 1)]
        if r == 1:
            return [(SEGMENTS[1][0], 1)]
        if r == 2:
            # the EOS that ended turn 0 is not kept (Search-R1 decodes without special tokens)
            return [(SEGMENTS[2][0], 1), (P.INVALID_ACTION_MESSAGE, 0), (SEGMENTS[2][1], 1),
                    (obs("beta"), 0), (SEGMENTS[2][2], 1), (obs("gamma"), 0), (SEGMENTS[2][3], 1)]
        return [(SEGMENTS[3][0], 1), (obs("d1"), 0), (SEGMENTS[3][1], 1), (obs("d2"), 0),
                (SEGMENTS[3][2].split(" then")[0], 1), (obs("d3"), 0), (" then <answer> z </answer>", 1)]

    for r, t in enumerate(trajs):
        # rebuild the response piece by piece from mask runs and compare text byte for byte
        assert pieces(tok, t) == expected(r), r
        # log-probs: 0 on context, the policy's (one-hot: 0.0) on sampled tokens
        assert len(t.logps) == len(t.response_ids)
        assert t.num_sampled == sum(t.loss_mask)


def test_last_turn_search_ends_the_trajectory(tok):
    """Search-R1 generation.py: the final turn runs with do_search=False, still stops on
    `</search>`, and that ends the trajectory with no retrieval (METHOD §1)."""
    policy, agent, retriever = build(tok, max_turns=2)
    trajs = agent.run(policy, ["q0", "q1", "q2", "q3"], jax.random.key(0), SamplingParams(greedy=True))
    t3 = trajs[3]
    # turns 0, 1 search (d1, d2); the last turn stops at `</search>`: no search, no answer
    assert t3.queries == ["d1", "d2"] and retriever.calls == [["alpha", "d1"], ["beta", "d2"]]
    assert t3.finish_reason == "max_turns" and t3.answer is None
    sampled = tok.decode([i for i, m in zip(t3.response_ids, t3.loss_mask) if m])
    assert sampled.endswith("x<search> d3 </search>") and "<answer>" not in sampled
    # row 2 used its two search turns on the invalid action and `beta`; the last turn is
    # `<search> gamma </search>`, which ends it
    assert trajs[2].queries == ["beta"] and trajs[2].finish_reason == "max_turns"


def test_bare_closing_answer_is_an_invalid_action_and_nested_search_keeps_its_content(tok):
    """Search-R1 `postprocess_predictions`: the action is the first `<(search|answer)>(.*?)</\\1>`
    match; a bare `</answer>` is no action (corrective message, continue), and `<search> a
    <search> b </search>` searches "a <search> b"."""
    segments = {0: ["I think Paris</answer>", "<answer> Paris </answer>"],
                1: ["<search> a <search> b </search>", "<answer> y </answer>"]}
    policy, agent, retriever = build(tok, max_turns=2, segments=segments)
    trajs = agent.run(policy, ["q0", "q1"], jax.random.key(0), SamplingParams(greedy=True))
    t0, t1 = trajs
    assert t0.finish_reason == "answer" and t0.answer == "Paris" and t0.queries == []
    context = tok.decode([i for i, m in zip(t0.response_ids, t0.loss_mask) if not m])
    assert context == P.INVALID_ACTION_MESSAGE
    assert retriever.calls == [["a <search> b"]] and t1.queries == ["a <search> b"] and t1.answer == "y"


def test_response_budget_cuts_the_trajectory(tok):
    policy, agent, _ = build(tok, max_turns=3)
    agent.cfg = dataclasses.replace(agent.cfg, max_response_tokens=20)
    trajs = agent.run(policy, ["q0", "q1", "q2", "q3"], jax.random.key(0), SamplingParams(greedy=True))
    for t in trajs:
        assert len(t.response_ids) <= 20
    assert trajs[0].finish_reason == "length"


def test_answer_comes_only_from_sampled_text(tok):
    # no tag in any turn: every turn gets the corrective message, which itself names
    # `<answer> and </answer>`; that span must not become the prediction or earn reward
    from searche1_jax.eval.metrics import score_example
    from searche1_jax.rl.rewards import em_rewards
    policy, agent, _ = build(tok, max_turns=1, segments={0: ["I do not know."] * 2, 1: SEGMENTS[1]})
    trajs = agent.run(policy, ["q0", "q1"], jax.random.key(0), SamplingParams(greedy=True))
    t = trajs[0]
    assert t.finish_reason == "max_turns"
    assert "<answer> and </answer>" in t.response_text and "<answer>" not in t.policy_text
    assert t.answer is None and trajs[1].answer == "yes"
    assert list(em_rewards([P.extract_answer(x.policy_text) for x in trajs], [("and",), ("yes",)])) == [0.0, 1.0]
    rec = score_example("nq", "0", "q0", ["and"], t.response_text, searches=0, length=t.num_sampled,
                        answer_text=t.policy_text)
    assert rec["prediction"] is None and rec["em"] == 0.0 and rec["response"] == t.response_text
