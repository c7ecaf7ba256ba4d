"""Learning test: GRPO on the tiny model learns to search a per-question corpus and copy the answer.

Toy search task over a vocabulary of 16 ids: PAD, Q, INFO, K = 4 word ids, the rest junk.
Every question draws its own corpus, a table mapping each word (a key) to a word drawn
uniformly at random (its value), so an answer cannot be memorised, only read from a retrieved
passage. One trajectory, two sampled tokens:

    prompt   [Q, key]                       loss_mask 0
    turn 1   the model samples its query    loss_mask 1
    passage  [INFO, query, value(query)]    loss_mask 0 ([INFO, PAD, PAD] if the query is no key)
    turn 2   the model samples its answer   loss_mask 1

reward = 1 iff the answer is the value of the question's key. Values are independent of each
other and of the prompt, so a policy that does not search the right key succeeds at most 1/K of
the time; a mean reward well above 1/K means "search the key, copy the value".

Why this shape (tuned so a random init learns within a CPU budget): keys and values share one
word set, so "emit a word" is one lesson for both turns (with separate value ids the policy
first learns to answer any value, stops searching, and sits at the 1/K ceiling); and each move
copies the last token seen (the key ends the prompt, the value ends the passage), which a
random tied-embedding model already slightly prefers. With a marker after the key and after
the value (a copy through attention) the same budget stayed at ~1/K.

Everything is the real machinery: generation with the jitted sampler (`append` + `decode` on
the KV cache, temperature 1), group-normalised advantages, log-probs from `steps.logps`, the
PPO-clipped GRPO step (two updates per rollout batch) and AdamW (`steps.adamw`) from `make_steps`.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from searche1_jax.model.config import get_preset
from searche1_jax.model.create import create_model
from searche1_jax.model.transformer import init_cache
from searche1_jax.rl.grpo import group_advantages
from searche1_jax.rollout.sampler import SamplingParams, append, decode, empty_state
from searche1_jax.train.batching import pack, to_micro
from searche1_jax.train.state import Binder, params_of
from searche1_jax.train.steps import StepConfig, hyper, lr_at, make_steps

PAD, Q, INFO = range(3)
K = 4                                   # words (keys and values); no-search ceiling = 1/K
WORDS = np.arange(3, 3 + K)
VOCAB = 16                              # ids 3 + K .. 15 are junk a query may hit
CFG = get_preset("tiny", vocab_size=VOCAB)
NO_STOP = dict(stop_table=jnp.zeros((1, VOCAB), jnp.int32), stop_rank=jnp.array([[1]], jnp.int32),
               eos_ids=jnp.array([-1], jnp.int32))
SEED, STEPS, LR = 0, 40, 3e-3
QUESTIONS, GROUP, UPDATES = 32, 8, 2    # 256 trajectories per step, two PPO updates of 128


def new_questions(rng: np.random.Generator, n: int):
    """-> key word index [n], corpora [n, K] (the value word of each key word)."""
    return rng.integers(0, K, n), WORDS[rng.integers(0, K, (n, K))]


def retrieve(query: int, corpus: np.ndarray) -> list[int]:
    """The search engine: the corpus entry of a key, nothing found otherwise."""
    hit = np.flatnonzero(WORDS == query)
    return [INFO, query, int(corpus[hit[0]])] if hit.size else [INFO, PAD, PAD]


def sample_token(model, state, key):
    """One sampled token per row (temperature 1) with the real decode loop."""
    b = state.logits.shape[0]
    out, state = decode(model, state, jnp.ones((b,), bool), key, stop_enabled=jnp.zeros((b, 1), bool),
                        max_new=1, params=SamplingParams(temperature=1.0), **NO_STOP)
    return np.asarray(out.tokens[:, 0]), state


def roll_out(model, key_idx, corpora, key):
    """Two-turn episodes, one per row -> (tokens [B, 7], loss_mask [B, 7], rewards [B])."""
    b = len(key_idx)
    prompts = np.stack([np.full(b, Q), WORDS[key_idx]], axis=1).astype(np.int32)
    state = empty_state(init_cache(CFG, b, 8), VOCAB)
    state = append(model, state, jnp.asarray(prompts), jnp.full((b,), 2, jnp.int32), jnp.int32(0))
    k1, k2 = jax.random.split(key)
    queries, state = sample_token(model, state, k1)
    found = np.asarray([retrieve(int(q), c) for q, c in zip(queries, corpora)], np.int32)
    state = append(model, state, jnp.asarray(found), jnp.full((b,), 3, jnp.int32), jnp.int32(0))
    answers, _ = sample_token(model, state, k2)
    tokens = np.concatenate([prompts, queries[:, None], found, answers[:, None]], axis=1)
    mask = np.zeros_like(tokens)
    mask[:, 2] = mask[:, -1] = 1         # the query and the answer: the model's own tokens
    truth = corpora[np.arange(b), key_idx]
    return tokens, mask, (answers == truth).astype(np.float32)


def train_grpo(*, seed: int, steps: int, lr: float, questions: int = QUESTIONS, group: int = GROUP,
               updates: int = UPDATES, log=None):
    """GRPO from a random init -> per step (mean reward, fraction of queries = the right key)."""
    model = create_model(CFG, seed=seed)
    binder = Binder(model)
    train = make_steps(binder, StepConfig(grpo_chunk=VOCAB))  # METHOD §2 defaults: clip 0.2, k3 KL
    # METHOD §2 coefficients (KL 0.001, entropy 0.001), temperature 1, constant lr, no weight decay
    hyper_at = lambda step: hyper(lr=lr_at(step, lr, total_steps=steps, warmup_ratio=0.0), weight_decay=0.0,
                                  grad_clip=1.0, kl_coef=0.001, entropy_coef=0.001, temperature=1.0,
                                  ofsd_temperature=1.0)
    params = params_of(model)
    ref_params = jax.tree.map(jnp.array, params)  # the step donates params
    opt_state = train.init(params, hyper_at(0))
    rng, key = np.random.default_rng(seed), jax.random.key(seed)
    rows, group_ids = questions * group, np.repeat(np.arange(questions), group)
    rewards_curve, search_curve = [], []
    for step in range(steps):
        key_idx, corpora = new_questions(rng, questions)
        key_idx, corpora = np.repeat(key_idx, group), np.repeat(corpora, group, axis=0)
        key, sub = jax.random.split(key)
        tokens, mask, rewards = roll_out(binder.bind(params), key_idx, corpora, sub)
        batch = pack(list(tokens), list(mask), length=tokens.shape[1])
        batch["advantages"] = group_advantages(rewards, group_ids)
        h = hyper_at(step)
        batch["old_logps"] = np.asarray(train.logps(params, batch["tokens"], batch["valid"], h))
        batch["ref_logps"] = np.asarray(train.logps(ref_params, batch["tokens"], batch["valid"], h))
        order, per = rng.permutation(rows), rows // updates
        for u in range(updates):
            part = {k: v[order[u * per:(u + 1) * per]] for k, v in batch.items()}
            params, opt_state, m = train.grpo(params, opt_state, to_micro(part, per), h)
        rewards_curve.append(float(rewards.mean()))
        search_curve.append(float((tokens[:, 2] == WORDS[key_idx]).mean()))
        if log:
            log(f"step {step:3d}  reward {rewards_curve[-1]:.3f}  right key searched "
                f"{search_curve[-1]:.2f}  entropy {float(m['entropy']):.2f}")
    return rewards_curve, search_curve


def test_grpo_learns_to_search_the_corpus_and_copy_the_answer():
    t0 = time.time()
    rewards, searched = train_grpo(seed=SEED, steps=STEPS, lr=LR)
    print(f"\nGRPO toy search task ({time.time() - t0:.0f}s): mean reward per step")
    print(" ".join(f"{r:.2f}" for r in rewards))
    print("fraction of queries that searched the question's key")
    print(" ".join(f"{s:.2f}" for s in searched))
    start, end = np.mean(rewards[:3]), np.mean(rewards[-5:])
    assert start < 0.2, f"a random policy should rarely succeed, got {start:.2f}"
    assert end > 0.6, (f"after {STEPS} GRPO steps the mean reward is {end:.2f}; "
                       f"a policy that does not search gets at most 1/K = {1 / K:.2f}")
    assert np.mean(searched[-5:]) > 0.6, "success must come from searching the right key"
