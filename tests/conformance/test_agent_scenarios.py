"""Search-R1 conformance: whole trajectories through the real `SearchAgent` (METHOD §1).

Each scenario scripts the policy's raw per-turn generations token by token (a `ScriptedPolicy`
emits them whatever the context) and checks the trajectory Search-R1's
`search_r1/llm_agent/generation.py` (`LLMGenerationManager.run_llm_loop`) would build from the
same generations: which turns end where, what is kept, which query is retrieved, the reward of
`verl/utils/reward_score/qa_em.py` (`compute_score_em`). Expected values are worked out by hand
below each docstring.
"""
import jax
import numpy as np
import pytest

from searche1_jax.model.checkpoint import smollm2_gguf_path
from searche1_jax.model.tokenizer import Tokenizer
from searche1_jax.rl.rewards import em_rewards
from searche1_jax.rollout import protocol as P
from searche1_jax.rollout.agent import STOP_STRINGS, AgentConfig, SearchAgent
from searche1_jax.rollout.sampler import SamplingParams
from searche1_jax.rollout.stop import build_stop_automaton, token_bytes_from_tokenizer
from searche1_jax.rollout.scripted import ScriptedPolicy
from tests.rollout.test_agent import ScriptedRetriever, pieces


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_gguf(smollm2_gguf_path())


def run(tok, turns, *, max_turns=4, gold="Paris", reward_text="policy"):
    """One trajectory whose policy generates `turns` (each a str, or a list of str / int token
    ids, concatenated) in order, then EOS forever. Returns (trajectory, reward, retriever)."""
    ids = []
    for turn in turns:
        for piece in ([turn] if isinstance(turn, (str, int)) else turn):
            ids += [piece] if isinstance(piece, int) else tok.encode(piece)
    eos = tok.eos_ids[0]
    script = np.asarray([ids + [eos] * 4], np.int32)
    stop = build_stop_automaton(list(STOP_STRINGS), token_bytes_from_tokenizer(tok.backend))
    retriever = ScriptedRetriever()
    agent = SearchAgent(tok, retriever, stop, AgentConfig(max_turns=max_turns, topk=2, max_turn_tokens=64,
                                                          max_response_tokens=2000, reward_text=reward_text))
    (t,) = agent.run(ScriptedPolicy(script, tok.vocab_size), ["q"], jax.random.key(0),
                     SamplingParams(greedy=True))
    return t, float(em_rewards([t.answer], [[gold]])[0]), retriever


def obs(retriever, query):
    return P.format_observation(retriever.search([query], 2)[0])


def test_search_then_answer(tok):
    """run_llm_loop: a turn cut at `</search>` retrieves its query and appends the observation
    (masked, info_mask); a turn with an answer pair ends the trajectory. Reward 1 (EM "Paris")."""
    t, reward, r = run(tok, ["<think> need it </think>\n<search> capital of France </search>",
                             "<answer> Paris </answer>"])
    assert r.calls == [["capital of France"]] and t.queries == ["capital of France"]
    assert pieces(tok, t) == [("<think> need it </think>\n<search> capital of France </search>", 1),
                              (obs(r, "capital of France"), 0), ("<answer> Paris </answer>", 1)]
    assert (t.finish_reason, t.answer, reward) == ("answer", "Paris", 1.0)


def test_bare_closing_answer_is_an_invalid_action_then_a_correct_answer(tok):
    """generation.py `postprocess_predictions`: `<(search|answer)>(.*?)</\\1>` finds no action in
    `Paris </answer>`, so `execute_predictions` appends the invalid-action note and the loop goes
    on; the next turn answers. Reward 1, no search."""
    t, reward, r = run(tok, ["Paris </answer>", "<answer> Paris </answer>"])
    assert pieces(tok, t) == [("Paris </answer>", 1), (P.INVALID_ACTION_MESSAGE, 0),
                              ("<answer> Paris </answer>", 1)]
    assert r.calls == [] and (t.finish_reason, t.answer, reward) == ("answer", "Paris", 1.0)


def test_eos_mid_turn_is_not_kept(tok):
    """generation.py `_postprocess_responses`: responses are decoded with
    skip_special_tokens=True and re-encoded, so the EOS that ended a turn is neither context
    before the invalid-action note nor a trained token."""
    eos = tok.eos_ids[0]
    t, reward, _ = run(tok, [["I am not sure", eos], "<answer> Paris </answer>"])
    assert eos not in t.response_ids
    assert pieces(tok, t) == [("I am not sure", 1), (P.INVALID_ACTION_MESSAGE, 0),
                              ("<answer> Paris </answer>", 1)]
    assert reward == 1.0


def test_search_in_the_last_turn_ends_the_trajectory_without_retrieval(tok):
    """run_llm_loop's final rollout (do_search=False) still stops at `</search>`; its action is a
    search, which is not executed, and the trajectory ends. The answer after it is never
    generated: reward 0."""
    t, reward, r = run(tok, ["<search> a </search>", "<search> b </search>", "<answer> Paris </answer>"],
                       max_turns=1)
    assert r.calls == [["a"]] and t.queries == ["a"]
    assert pieces(tok, t) == [("<search> a </search>", 1), (obs(r, "a"), 0), ("<search> b </search>", 1)]
    assert (t.finish_reason, t.answer, reward) == ("max_turns", None, 0.0)


def test_text_glued_to_the_closing_tag_is_dropped(tok):
    """`_postprocess_responses` cuts each response right after `</answer>` / `</search>`; the '.'
    sampled in the same token as the tag's '>' (SmolLM2 token '>.') is not kept, and the cut
    text is re-encoded ('>' alone)."""
    glued = tok.backend.token_to_id(">.")
    body = tok.encode("<answer> Paris </answer")
    t, reward, _ = run(tok, [body + [glued]])
    assert t.response_ids == tok.encode("<answer> Paris </answer>") and t.loss_mask == [1] * 7
    assert tok.decode(t.response_ids) == "<answer> Paris </answer>"
    assert (t.answer, reward) == ("Paris", 1.0)
    # the same for a search: the observation follows the tag directly
    t, _, r = run(tok, [tok.encode("<search> Paris </search") + [glued], "<answer> Paris </answer>"])
    assert pieces(tok, t)[:2] == [("<search> Paris </search>", 1), (obs(r, "Paris"), 0)]


def test_nested_search_tags_search_the_first_pair(tok):
    """`postprocess_predictions`' non-greedy `<(search|answer)>(.*?)</\\1>` starts at the first
    opener: `<search> a <search> b </search>` searches "a <search> b"."""
    t, _, r = run(tok, ["<search> a <search> b </search>", "<answer> Paris </answer>"])
    assert r.calls == [["a <search> b"]] and t.queries == ["a <search> b"]


def test_empty_query_is_an_invalid_action(tok):
    """Search-R1 would retrieve for "" (`<search> </search>`); our documented choice (METHOD §1
    [choice]) answers it with the invalid-action note and retrieves nothing."""
    t, reward, r = run(tok, ["<search> </search>", "<answer> Paris </answer>"])
    assert r.calls == [] and t.queries == []
    assert pieces(tok, t) == [("<search> </search>", 1), (P.INVALID_ACTION_MESSAGE, 0),
                              ("<answer> Paris </answer>", 1)]
    assert reward == 1.0


def test_four_searches_then_a_final_answer(tok):
    """max_turns=4 search turns, then the final turn (searching disabled) answers: 4 retrievals
    in order, 4 observations, reward 1."""
    qs = ["w", "x", "y", "z"]
    t, reward, r = run(tok, [f"<search> {q} </search>" for q in qs] + ["<answer> Paris </answer>"])
    assert r.calls == [[q] for q in qs] and t.queries == qs
    want = []
    for q in qs:
        want += [(f"<search> {q} </search>", 1), (obs(r, q), 0)]
    assert pieces(tok, t) == want + [("<answer> Paris </answer>", 1)]
    assert (t.finish_reason, reward) == ("answer", 1.0)


def test_reward_text_search_r1_reads_prompt_and_response(tok):
    """qa_em.py `extract_solution` over the decoded prompt + response (two matches needed, the
    last wins): a trajectory that never answers reads the prompt's own example `<answer> Beijing
    </answer>`; a corrective note's `<answer> and </answer>` counts. Ours reads only what the
    policy sampled."""
    never = ["I am not sure", "Still not sure"]
    t, reward, _ = run(tok, never, max_turns=1, gold="Beijing")
    assert (t.answer, reward) == (None, 0.0)
    t, _, _ = run(tok, never[:1], max_turns=0, gold="Beijing", reward_text="search_r1")
    assert t.answer == "Beijing"  # no corrective note was appended (the only turn was the last)
    t, reward, _ = run(tok, never, max_turns=1, gold="and", reward_text="search_r1")
    assert (t.answer, reward) == ("and", 1.0)  # the corrective note's pair is the last match
    t, reward, _ = run(tok, ["<answer> Paris </answer>"], reward_text="search_r1")
    assert (t.answer, reward) == ("Paris", 1.0)
