"""Search-R1 conformance: the bytes the model reads (METHOD §1).

Prompt tokenisation (`verl/utils/dataset/rl_dataset.py`: the chat-templated prompt tokenised in
one call), the observation string (`search_r1/llm_agent/generation.py` `_passages2string` then
`.strip()`), the answer extraction of `verl/utils/reward_score/qa_em.py`, and the KV cache that
holds exactly the kept tokens after an EOS (`_postprocess_responses` re-encodes without it).
"""
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from searche1_jax.model.checkpoint import smollm2_gguf_path
from searche1_jax.model.config import ModelConfig
from searche1_jax.model.tokenizer import Tokenizer
from searche1_jax.model.transformer import Transformer, init_cache
from searche1_jax.rollout import protocol as P
from searche1_jax.rollout.agent import STOP_STRINGS, AgentConfig, SearchAgent
from searche1_jax.rollout.sampler import SamplingParams
from searche1_jax.rollout.stop import build_stop_automaton, token_bytes_from_tokenizer


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_gguf(smollm2_gguf_path())


def agent(tok, *, chat_template="auto", cfg=AgentConfig()):
    stop = build_stop_automaton(list(STOP_STRINGS), token_bytes_from_tokenizer(tok.backend))
    return SearchAgent(tok, None, stop, cfg, chat_template=chat_template)


def test_observation_bytes():
    """`_passages2string`: `Doc {i}(Title: {first line of contents}) {rest}\\n` joined, quotes
    kept; `execute_predictions` strips it and frames it `\\n\\n<information>…</information>\\n\\n`
    (no newline before `</information>`)."""
    docs = [SimpleNamespace(contents='"Paul Walker"\nPaul Walker was an actor.'),
            SimpleNamespace(contents='"Île-de-France"\nA region.\nSecond line.'),
            SimpleNamespace(contents='"Say "Hello" (song)"\nA song.  '),
            SimpleNamespace(contents='Untitled  \nTrailing text  ')]
    want = ("\n\n<information>"
            'Doc 1(Title: "Paul Walker") Paul Walker was an actor.\n'
            'Doc 2(Title: "Île-de-France") A region.\nSecond line.\n'
            'Doc 3(Title: "Say "Hello" (song)") A song.  \n'
            "Doc 4(Title: Untitled  ) Trailing text"
            "</information>\n\n")
    assert P.format_observation(docs) == want
    assert P.format_observation([]) == "\n\n<information></information>\n\n"


@pytest.mark.parametrize("question", ["who wrote hamlet", "Où est Paris?", "  2+2 =  "])
def test_prompt_ids_are_the_one_piece_encoding(tok, question):
    """rl_dataset.py tokenises the whole chat-templated prompt at once: no seam before
    `Question:` (a two-piece encoding gives ' ', 'Question' where one piece gives ' Question')."""
    a = agent(tok)
    ids, start = a.prompt_ids(question)
    text = P.build_prompt(question, chat_template=lambda m: tok.apply_chat_template(m))
    assert text.startswith("<|im_start|>system")  # the template was applied
    assert ids == tok.encode(text)
    assert tok.decode(ids[start:start + 1]) == " Question"  # the seam's space rides on the token
    assert tok.decode(ids[:start]).endswith("</answer>.")
    assert tok.decode(ids[start:]).lstrip().startswith(P.question_line(question))
    two_piece = tok.encode(text[:text.rfind("Question:")]) + tok.encode(text[text.rfind("Question:"):])
    assert len(two_piece) == len(ids) + 1


def test_chat_template_whenever_the_tokenizer_has_one(tok):
    """Search-R1's base-model runs tokenised ChatML prompts (Qwen2.5 base tokenizers ship the
    template): "auto" applies it whenever present, raw text only without one; "never" forces
    raw text."""
    raw = P.build_prompt("q", chat_template=None)
    assert tok.decode(agent(tok).prompt_ids("q")[0]) != raw
    assert tok.decode(agent(tok, chat_template="never").prompt_ids("q")[0]) == raw
    no_template = Tokenizer(tok.backend, chat_template=None, eos_tokens=tok.eos_tokens)
    assert tok.decode(agent(no_template).prompt_ids("q")[0]) == raw
    with pytest.raises(ValueError, match="chat_template must be one of"):
        agent(tok, chat_template="always")


SEARCH_R1_TEXTS = [
    # (prompt + response text, Search-R1's extracted answer)
    ("no answer at all", None),
    ("<answer> only one </answer>", None),                      # one match: None
    ("ex <answer> Beijing </answer> q. <think>no idea</think>", None),
    ("ex <answer> and </answer> <answer> Beijing </answer> q. <think>hm</think>", "Beijing"),  # never answered
    ("ex <answer> Beijing </answer> r " + P.INVALID_ACTION_MESSAGE, "and"),  # the corrective note's pair
    ("ex <answer> Beijing </answer> <answer><answer> x </answer></answer>", "<answer> x"),  # no innermost
    ("ex <answer> Beijing </answer> <answer> a\nb </answer> <answer> c", "a\nb"),  # unclosed ignored
]


@pytest.mark.parametrize("text,want", SEARCH_R1_TEXTS)
def test_search_r1_answer_extraction(text, want):
    """qa_em.py `extract_solution`: `re.finditer(r'<answer>(.*?)</answer>', s, re.DOTALL)`; None
    for 0 or 1 matches, else the last match's group stripped."""
    assert P.extract_answer_search_r1(text) == want


def test_our_answer_extraction_on_the_same_texts():
    """Ours (the default) on the policy's own text: the last complete, innermost pair; one match
    suffices; the prompt and the corrective note are never part of that text."""
    assert P.extract_answer("<answer> only one </answer>") == "only one"
    assert P.extract_answer("<answer><answer> x </answer></answer>") == "x"
    assert P.extract_answer("<think>no idea</think>") is None


class EosHeavy(nnx.Module):
    """A random tiny decoder over SmolLM2's vocabulary whose EOS logit is raised by 10 (EOS
    probability about e^10 / (e^10 + 49,151), 0.3 a token), so sampled turns often end on EOS."""

    def __init__(self, vocab: int, eos: int):
        self.inner = Transformer(ModelConfig(vocab_size=vocab, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1,
                                             head_dim=16, mlp_dim=64, dtype="float32"), rngs=nnx.Rngs(0))
        self.cfg = self.inner.cfg
        self.bias = jnp.zeros((vocab,), jnp.float32).at[eos].set(10.0)

    def extend(self, tokens, n_valid, cache, output="last"):
        logits, cache = self.inner.extend(tokens, n_valid, cache, output=output)
        return logits + self.bias, cache


def test_the_cache_holds_exactly_the_kept_tokens_after_eos(tok):
    """After a turn ends on EOS the agent rewinds the cache past it (the kept text has no EOS),
    so every later sampled token was drawn with exactly prompt + kept response as context: its
    recorded sampling log-prob equals a teacher-forced forward over that record."""
    eos = tok.eos_ids[0]
    model = EosHeavy(tok.vocab_size, eos)
    a = agent(tok, cfg=AgentConfig(max_turns=3, max_turn_tokens=6, max_response_tokens=400))
    trajs = a.run(model, ["who wrote hamlet", "where is paris"], jax.random.key(3), SamplingParams())
    checked = 0
    for t in trajs:
        assert eos not in t.response_ids
        seq = t.prompt_ids + t.response_ids
        cache = init_cache(model.cfg, 1, len(seq))
        logits, _ = model.extend(jnp.asarray([seq]), jnp.asarray([len(seq)]), cache, output="all")
        logp = np.asarray(jax.nn.log_softmax(logits[0], -1))
        p0 = len(t.prompt_ids)
        for i, (tid, m, lp) in enumerate(zip(t.response_ids, t.loss_mask, t.logps)):
            if m and not np.isnan(lp):
                np.testing.assert_allclose(lp, logp[p0 + i - 1, tid], atol=2e-4)
                checked += 1
    assert checked >= 10
    # some turns did end on EOS: shorter than the 6-token turn budget with no closing tag
    ended_on_eos = [seg for t in trajs for seg in t.sampled_segments()[:-1] if len(seg) < 6]
    assert len(ended_on_eos) >= 2
