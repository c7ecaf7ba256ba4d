"""Experiment.compile_count counts the rollouts' executables (decode, append, the shared prefill)
beside the train steps', within a bound set by the shape buckets, and flat once they are warm."""
import math

import jax

from searche1_jax.rollout.engine import compiled_counts, row_buckets
from searche1_jax.shapes import round_up
from tests.train.test_bad_input import tiny_config


def windows(max_len: int) -> int:
    """decode_window's values for a cache of max_len slots: 64, 128, ... then max_len."""
    return math.ceil(math.log2(max_len / 64)) + 1


def test_compile_count_counts_rollouts_within_the_bucket_bound_and_a_replay_compiles_nothing(monkeypatch):
    """Rollouts of 2 questions x G=4 from prompts of two length buckets, two keys each. Per
    prompt width p (the cache has p + max_response_tokens slots) the engine compiles at most:
    decode, one per (row bucket, window); the shared prefill, one per (row bucket of the distinct
    prompts, window); an append, one per (row bucket, width bucket, window), its widths at most
    the kept turn plus an observation. Replaying the same rollouts compiles nothing."""
    from searche1_jax.train.setup import Experiment
    monkeypatch.setattr("searche1_jax.train.setup.make_mesh", lambda shape: None)  # one device
    exp = Experiment(tiny_config())
    c, agent = exp.config, exp.agent
    policy = exp.policy(exp.initial_params())
    g = c.rollout.group_size
    by_width = {}  # prompt width -> two questions of that bucket
    for ex in exp.train_data.examples:
        width = round_up(len(agent.prompt_ids(ex.question)[0]), c.rollout.prompt_bucket)
        by_width.setdefault(width, [])
        if len(by_width[width]) < 2:
            by_width[width].append(ex.question)
    widths = sorted(w for w, qs in by_width.items() if len(qs) == 2)[:2]
    assert len(widths) == 2, by_width  # the rollouts really vary in length

    runs = [([q for q in by_width[w] for _ in range(g)], seed) for w in widths for seed in (0, 1)]
    before, steps_before, counts = exp.compile_count(), exp.steps.compile_count(), []
    parts_before = sum(compiled_counts())
    for questions, seed in runs:
        agent.run(policy, questions, jax.random.key(seed), exp.sampling[0])
        counts.append(exp.compile_count())
    assert exp.steps.compile_count() == steps_before  # no update ran: every new executable is a rollout's
    assert counts[-1] - before == sum(compiled_counts()) - parts_before > 0

    rows = 2 * g
    append_widths = math.ceil((c.rollout.max_turn_tokens + c.rollout.max_obs_tokens) / c.rollout.prompt_bucket)
    bound = sum(len(row_buckets(rows)) * windows(w + c.rollout.max_response_tokens) * (2 + append_widths)
                for w in widths)
    assert counts[-1] - before <= bound, (counts, bound)

    for questions, seed in runs:  # the same shapes again: every executable is in the cache
        agent.run(policy, questions, jax.random.key(seed), exp.sampling[0])
    assert exp.compile_count() == counts[-1]


def test_freed_programs_are_dropped_and_compiled_again_with_the_same_results(monkeypatch):
    """config.train.free_programs: `free_compiled` and `Steps.free` drop every rollout and step
    executable (the counts fall to 0); the next rollout and log-prob step compile them again and
    give the same trajectories and log-probs as before."""
    import numpy as np

    from searche1_jax.rollout.engine import free_compiled
    from searche1_jax.train.setup import Experiment
    monkeypatch.setattr("searche1_jax.train.setup.make_mesh", lambda shape: None)
    exp = Experiment(tiny_config())
    agent, params = exp.agent, exp.initial_params()
    policy = exp.policy(params)
    questions = [exp.train_data.examples[0].question] * exp.config.rollout.group_size
    tokens = jax.numpy.asarray(np.arange(64, dtype=np.int32).reshape(2, 32) % 50)

    def run():
        trajs = agent.run(policy, questions, jax.random.key(3), exp.sampling[0])
        lp = exp.steps.logps(params, tokens, tokens >= 0, exp.hyper(0))
        return [t.response_ids for t in trajs], np.asarray(lp)

    ids, lp = run()
    assert sum(compiled_counts()) > 0 and exp.steps.compile_count() > 0
    free_compiled()
    exp.steps.free("logps", "grpo", "ofsd", "sft")
    assert sum(compiled_counts()) == 0 and exp.steps.compile_count() == 0
    ids2, lp2 = run()
    assert sum(compiled_counts()) > 0 and exp.steps.compile_count() == 1
    assert ids2 == ids
    np.testing.assert_array_equal(lp2, lp)
