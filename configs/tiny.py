"""Random tiny model for tests and CI: every code path of the real run, in seconds.

Data: the demo's shipped questions and corpus (BM25); model: the `tiny` preset with the
SmolLM2 tokenizer's vocabulary size so real token ids fit.
"""
import os

from searche1_jax.config import DEMO_DIR, base

VARIANTS = ("",)  # the string args get_config takes


def get_config(arg: str = ""):
    if arg not in VARIANTS:
        raise ValueError(f"configs/tiny.py takes no variant, got {arg!r}")
    c = base()
    c.model.preset = "tiny"
    c.model.checkpoint = ""
    c.model.tokenizer = "smollm2"
    c.model.dtype = "float32"
    c.model.remat = False
    c.data.train = os.path.join(DEMO_DIR, "train.jsonl")
    c.data.dev = os.path.join(DEMO_DIR, "dev.jsonl")
    c.retrieval.kind = "bm25"
    c.retrieval.corpus = os.path.join(DEMO_DIR, "corpus.jsonl")
    c.rollout.group_size = 4
    c.rollout.max_turns = 2
    c.rollout.max_turn_tokens = 16
    c.rollout.max_obs_tokens = 64
    c.rollout.max_response_tokens = 160
    c.rollout.prompt_bucket = 32
    c.grpo.steps_per_round = 2
    c.grpo.questions_per_step = 4
    c.grpo.mini_batch = 8              # trajectories per update: 4 x 4 = 16 a step, 2 updates
    c.grpo.micro_batch = 4
    c.grpo.length_bucket = 64
    c.grpo.logit_chunk = 128
    c.ofsd.questions = 4
    c.ofsd.group_size = 4
    c.ofsd.mini_batch = 4
    c.ofsd.micro_batch = 2
    c.ofsd.length_bucket = 64
    c.ofsd.logit_chunk = 128
    c.train.rounds = 1
    c.train.lr = 1e-3
    c.train.compilation_cache_dir = ""  # tests start many short runs in fresh workdirs: nothing to reuse
    c.checkpoint.every_steps = 1
    c.checkpoint.async_save = False
    c.log.tensorboard = False
    return c
