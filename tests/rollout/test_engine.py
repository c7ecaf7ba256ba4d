"""The packed rollout engine against the padded one (the engine before issue 21): the same
trajectories, token for token, from a real (tiny or SmolLM2) model, greedy and sampled, with rows
that finish at different turns; and its compile bound and counters."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from searche1_jax.model.checkpoint import smollm2_gguf_path
from searche1_jax.model.config import get_preset
from searche1_jax.model.create import create_model
from searche1_jax.model.tokenizer import Tokenizer
from searche1_jax.rollout.agent import STOP_STRINGS, AgentConfig, SearchAgent
from searche1_jax.rollout.engine import EngineStats, compiled_counts, row_buckets, shared_prefix
from searche1_jax.rollout.sampler import SamplingParams
from searche1_jax.rollout.stop import build_stop_automaton, token_bytes_from_tokenizer
from tests.rollout.test_agent import ScriptedRetriever

# the tags' pieces in SmolLM2's vocabulary ("<search> x </search>" = < search > ␣x ␣</ search >)
PIECES = {"<": 44, "search": 7916, ">": 46, " x": 1792, " </": 22577, "answer": 11247, "</": 9617}


class Steered(nnx.Module):
    """A real model whose next-token logits are scaled and confined to the tags' pieces and EOS
    (log-weights `bias`, -1e9 elsewhere): a random model then writes searches, answers, bare tags
    and EOS, so rows stop within a turn and finish at different turns."""

    def __init__(self, model, bias: np.ndarray, scale: float):
        self.model, self.cfg, self.scale = model, model.cfg, scale
        self.bias = nnx.Variable(jnp.asarray(bias, jnp.float32))

    def extend(self, tokens, n_valid, cache, output="last"):
        logits, cache = self.model.extend(tokens, n_valid, cache)
        return logits * self.scale + self.bias[...], cache

    def few_row_view(self):
        """The same steering over the model's few-row view (the engine decodes small buckets so)."""
        if self.model.head_out_in:
            return self
        return Steered(self.model.few_row_view(), np.asarray(self.bias[...]), self.scale)


def steer(model, tok, weights: dict, scale: float) -> Steered:
    bias = np.full((tok.vocab_size,), -1e9, np.float32)
    for piece, w in weights.items():
        bias[PIECES[piece] if piece != "eos" else tok.eos_ids[0]] = math.log(w)
    return Steered(model, bias, scale)


SAMPLED = {"<": .15, "search": .2, "answer": .12, ">": .18, " x": .1, " </": .2, "eos": .08}


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_gguf(smollm2_gguf_path())


def make_agent(tok, engine, **kw):
    stop = build_stop_automaton(list(STOP_STRINGS), token_bytes_from_tokenizer(tok.backend))
    cfg = dict(max_turns=3, topk=2, max_turn_tokens=24, max_obs_tokens=40, max_response_tokens=220,
               prompt_bucket=32, engine=engine)
    cfg.update(kw)
    return SearchAgent(tok, ScriptedRetriever(), stop, AgentConfig(**cfg))


def run_both(tok, policy, questions, key, sampling, **kw):
    out = {}
    for engine in ("padded", "packed"):
        agent = make_agent(tok, engine, **kw)
        out[engine] = (agent.run(policy, questions, key, sampling), agent.take_stats(), agent.retriever.calls)
    return out


def assert_same_trajectories(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.response_ids == y.response_ids
        assert x.loss_mask == y.loss_mask
        assert x.queries == y.queries and x.finish_reason == y.finish_reason and x.answer == y.answer
        # log-probs: the same up to fp32 summation order (other batch shapes, windows, kernels;
        # SmolLM2 sampled: 1 of 106 differed by 1.7e-5)
        np.testing.assert_allclose(x.logps, y.logps, rtol=1e-4, atol=1e-4)


def turns_of(t) -> int:
    return len(t.sampled_segments())


QUESTIONS = ["Who wrote Hamlet?", "Where is Paris?", "What is 2+2?", "Who painted the Mona Lisa?"]


@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "sampled"])
def test_packed_engine_gives_the_padded_engines_trajectories_tiny_model(tok, greedy):
    model = create_model(get_preset("tiny", vocab_size=tok.vocab_size), seed=3)
    if greedy:  # the random model's own preferences pick among the pieces: its matrices scaled
        # up 8x, so that they depend on the context (at init scale it writes " x" forever)
        nnx.update(model, jax.tree.map(lambda x: x * 8.0 if x.ndim >= 2 else x, nnx.state(model, nnx.Param)))
        policy, sampling, questions = steer(model, tok, {p: 1.0 for p in SAMPLED}, 1.0), \
            SamplingParams(greedy=True), QUESTIONS * 2
    else:  # GRPO groups: each question G = 3 times
        policy, sampling = steer(model, tok, SAMPLED, 1.0), SamplingParams(temperature=1.0)
        questions = [q for q in QUESTIONS for _ in range(3)]
    out = run_both(tok, policy, questions, jax.random.key(4), sampling)
    (padded, s_pad, calls_pad), (packed, s_pack, calls_pack) = out["padded"], out["packed"]
    assert_same_trajectories(packed, padded)
    assert calls_pack == calls_pad
    # the scenario is worth testing: rows end at different turns (and for different reasons)
    assert len({turns_of(t) for t in packed}) >= 2
    assert greedy or len({t.finish_reason for t in packed}) >= 2
    # the same sampled tokens, fewer rows computed; one prefill per distinct question
    assert s_pack.sampled_tokens == s_pad.sampled_tokens
    assert s_pack.row_steps < s_pad.row_steps
    prompts = [len(t.prompt_ids) for t in packed]
    assert s_pad.prefill_tokens == sum(prompts)
    # packed: the instruction the prompts start with once, then each question's own tokens
    distinct = list(dict.fromkeys(tuple(t.prompt_ids) for t in packed))
    shared = next(i for i in range(min(map(len, distinct))) if len({p[i] for p in distinct}) > 1)
    assert shared > 100  # (Search-R1's instruction, in SmolLM2's chat template)
    assert s_pack.prefill_tokens == shared + sum(len(p) - shared for p in distinct)
    if not greedy:  # siblings of one group share the prompt, not the samples
        assert packed[0].response_ids != packed[1].response_ids


@pytest.mark.slow
@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "sampled"])
def test_packed_engine_gives_the_padded_engines_trajectories_smollm2(tok, greedy):
    from searche1_jax.model.checkpoint import load_gguf
    model, _ = load_gguf(smollm2_gguf_path())
    # untrained, SmolLM2 writes the same few EOS-ended turns for every question: steered to the
    # tags' pieces, its own preferences among them end rows at different turns
    policy = steer(model, tok, SAMPLED, 1.0)
    sampling = SamplingParams(greedy=True) if greedy else SamplingParams(temperature=1.0)
    questions = QUESTIONS if greedy else [q for q in QUESTIONS[:3] for _ in range(3)]
    out = run_both(tok, policy, questions, jax.random.key(1), sampling, max_turns=2, max_turn_tokens=32,
                   max_response_tokens=120)
    (padded, _, calls_pad), (packed, stats, calls_pack) = out["padded"], out["packed"]
    assert_same_trajectories(packed, padded)
    assert calls_pack == calls_pad
    assert len({turns_of(t) for t in packed}) >= 2
    assert stats.row_steps / stats.sampled_tokens < 2.0


def test_compilations_stay_within_the_bucket_bound_and_a_repeat_compiles_nothing(tok):
    """decode compiles once per (row bucket, window): `row_buckets(B)` sizes times power-of-two
    windows from 64 to the S slots, so a rollout of B rows builds at most
    len(row_buckets(B)) x (log2(S / 64) + 1) decode executables, whatever its rows do; running
    the same rollout again builds none."""
    model = create_model(get_preset("tiny", vocab_size=tok.vocab_size), seed=5)
    policy = steer(model, tok, SAMPLED, 1.0)
    questions = [q for q in QUESTIONS for _ in range(4)]  # B = 16
    agent = make_agent(tok, "packed")
    before = compiled_counts()
    for seed in range(3):
        agent.run(policy, questions, jax.random.key(seed), SamplingParams(temperature=1.0))
    stats = agent.take_stats()
    slots = 32 * math.ceil(max(len(agent.prompt_ids(q)[0]) for q in QUESTIONS) / 32) + 150
    bound = len(row_buckets(16)) * (math.ceil(math.log2(slots / 64)) + 1)
    assert row_buckets(16) == [1, 2, 3, 4, 6, 8, 12, 16] and row_buckets(80)[-3:] == [48, 64, 80]
    assert row_buckets(16, "pow2") == [1, 2, 4, 8, 16] and row_buckets(80, "pow2")[-3:] == [32, 64, 80]
    assert row_buckets(12, "pow2") == [1, 2, 4, 8, 12] and row_buckets(1, "pow2") == [1]
    assert stats.decode_compiles == compiled_counts()[0] - before[0] <= bound
    agent.run(policy, questions, jax.random.key(0), SamplingParams(temperature=1.0))
    again = agent.take_stats()
    assert again.decode_compiles == 0 and again.append_compiles == 0
    m = again.metrics()
    assert m["row_steps_per_token"] >= 1.0 and m["prefill_tokens_per_question"] > 0
    assert m["decode_s"] > 0 and m["append_s"] > 0 and m["host_s"] >= 0


def test_pow2_row_buckets_give_the_same_trajectories_from_fewer_bucket_sizes(tok):
    """config.rollout.row_buckets = "pow2" changes which rows share a call, not what a row
    computes: the same trajectories as "half", with at least as many row-steps, and decode
    executables within the pow2 bound (5 row buckets for 12 rows, not 7)."""
    from searche1_jax.rollout.engine import free_compiled
    model = create_model(get_preset("tiny", vocab_size=tok.vocab_size), seed=3)
    policy = steer(model, tok, SAMPLED, 1.0)
    questions = [q for q in QUESTIONS for _ in range(3)]  # 12 rows: groups of 3
    out = {}
    free_compiled()  # pow2's executables counted from none; "half" then reuses its 1, 2, 4, 8 rows
    for kind in ("pow2", "half"):
        agent = make_agent(tok, "packed", row_buckets=kind)
        out[kind] = (agent.run(policy, questions, jax.random.key(4), SamplingParams(temperature=1.0)),
                     agent.take_stats())
    (half, s_half), (pow2, s_pow2) = out["half"], out["pow2"]
    assert_same_trajectories(pow2, half)
    assert len({turns_of(t) for t in half}) >= 2  # rows leave at different turns: buckets shrink
    assert s_pow2.sampled_tokens == s_half.sampled_tokens and s_pow2.row_steps >= s_half.row_steps
    slots = 32 * math.ceil(max(len(agent.prompt_ids(q)[0]) for q in QUESTIONS) / 32) + 220
    assert s_pow2.decode_compiles <= len(row_buckets(12, "pow2")) * (math.ceil(math.log2(slots / 64)) + 1)
    with pytest.raises(ValueError, match="config.rollout.row_buckets must be one of"):
        make_agent(tok, "packed", row_buckets="thirds")


def test_shared_prefix_is_the_common_start_where_it_halves_the_positions():
    a = list(range(100, 200))                           # 100 tokens every prompt starts with
    four = [a + [i] for i in range(4)]
    assert shared_prefix(four[:1], 1, 32) == 0          # one prompt: nothing to share
    # split: 128 (100 padded to 32s) + 4 rows x 32, against 4 x 128 whole: half
    assert shared_prefix(four, 4, 32) == 100
    assert shared_prefix(four[:2], 2, 32) == 0          # 128 + 2 x 32 = 192 of 256: not half
    assert shared_prefix(four, 8, 32) == 100            # padded to 8 rows: 384 of 1024
    # each prompt keeps a token of its own: 99 shared (128 + 4 x 32 of 4 x 128)
    assert shared_prefix([a, a + [2, 3], a + [4], a + [5]], 4, 32) == 99
    assert shared_prefix([[i] + a for i in range(4)], 4, 32) == 0     # no common start
    # 20 of 40 tokens shared: 32 + 4 x 32 = 160 of 4 x 64 = 256 whole: not half
    assert shared_prefix([a[:20] + [i] * 20 for i in range(4)], 4, 32) == 0


def test_engine_stats_add_and_metrics():
    a = EngineStats(rows=4, questions=2, prefill_tokens=100, sampled_tokens=10, row_steps=13, wall_s=2.0,
                    decode_s=1.0, append_s=0.5, retrieval_s=0.25)
    a.add(dataclasses.replace(a))
    m = a.metrics()
    assert m["row_steps_per_token"] == 1.3 and m["prefill_tokens_per_question"] == 50
    assert m["host_s"] == pytest.approx(0.5)


@pytest.mark.parametrize("greedy", [pytest.param(True, marks=pytest.mark.slow), False], ids=["greedy", "sampled"])
def test_packed_engine_on_8_devices_gives_the_one_device_trajectories(tok, greedy):
    """Issue 20: on a mesh the cache's rows are split over data x fsdp and the packed engine packs
    each device's live rows into its own part of the bucket (`rollout.packing`). Rows are
    independent, so the trajectories are those of one device, token for token."""
    from searche1_jax.model.create import flat_params, model_from_arrays
    from searche1_jax.model.sharding import make_mesh
    from searche1_jax.rollout.engine import RowEngine
    cfg = get_preset("tiny", vocab_size=tok.vocab_size)
    model = create_model(cfg, seed=3)
    if greedy:  # as in the one-device test: the random model's own preferences pick the pieces
        nnx.update(model, jax.tree.map(lambda x: x * 8.0 if x.ndim >= 2 else x, nnx.state(model, nnx.Param)))
    mesh = make_mesh({"data": 2, "fsdp": 4})
    on_mesh = model_from_arrays(cfg, {k: np.asarray(v) for k, v in flat_params(model).items()}, mesh=mesh)
    weights = {p: 1.0 for p in SAMPLED} if greedy else SAMPLED
    sampling = SamplingParams(greedy=True) if greedy else SamplingParams(temperature=1.0)
    questions = [q for q in QUESTIONS for _ in range(4)]  # 16 rows: 2 on each of the 8 devices
    out = {}
    for name, m in (("one", model), ("mesh", on_mesh)):
        agent = make_agent(tok, "packed")
        out[name] = (agent.run(steer(m, tok, weights, 1.0), questions, jax.random.key(4), sampling),
                     agent.take_stats(), agent.retriever.calls)
    assert RowEngine(on_mesh, 16, 64, 0, engine="packed", stats=EngineStats()).shards == 8
    (one, s_one, calls_one), (sharded, s_mesh, calls_mesh) = out["one"], out["mesh"]
    assert_same_trajectories(sharded, one)
    assert calls_mesh == calls_one
    assert len({turns_of(t) for t in sharded}) >= 2  # rows leave at different turns
    assert s_mesh.sampled_tokens == s_one.sampled_tokens and s_mesh.prefill_tokens == s_one.prefill_tokens
