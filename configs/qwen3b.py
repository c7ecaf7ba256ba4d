"""Search-E1 with Qwen2.5-3B (instruct): the paper's setting on Search-R1's protocol.

    python -m searche1_jax.main --config=configs/qwen3b.py \
        --config.model.checkpoint=/models/Qwen2.5-3B-Instruct \
        --config.data.train=/data/nq_hotpotqa_train.parquet \
        --config.retrieval.kind=scann --config.retrieval.index=/indexes/wiki18_e5_scann
Variants (VARIANTS): --config=configs/qwen3b.py:base (Qwen2.5-3B base; the same ChatML prompt, METHOD §1).
"""
from searche1_jax.config import base

VARIANTS = ("instruct", "base")  # the string args get_config takes


def get_config(arg: str = "instruct"):
    if arg not in VARIANTS:
        raise ValueError(f"configs/qwen3b.py variants are {VARIANTS}, got {arg!r}")
    c = base()
    c.model.checkpoint = ""            # a local HF directory of Qwen/Qwen2.5-3B(-Instruct): required
    c.model.architecture = "qwen2.5-3b"  # the checkpoint's shapes (plan.py); base and instruct share them
    # both variants render the prompt with the tokenizer's ChatML template (rollout.chat_template
    # "auto"): Qwen2.5 base tokenizers ship it and Search-R1's base runs used it (METHOD §1);
    # the variant only names which checkpoint you pass
    # Search-R1 3B scale (METHOD §2): 512 questions/step x G=5 = 2,560 trajectories, mini-batch
    # 256 trajectories (10 AdamW updates a step), lr 1e-6 warmed up over floor(0.285 x S) GRPO
    # steps; S = 1005 steps is about 3 epochs of NQ+HotpotQA (169,615 questions, 331 steps an epoch).
    c.grpo.questions_per_step = 512
    c.grpo.mini_batch = 256            # trajectories (Search-R1's ppo_mini_batch_size)
    c.grpo.steps_per_round = 50        # [choice] METHOD §3.6
    c.train.rounds = 20                # 20 x 50 = 1000 GRPO steps
    c.train.lr = 1e-6
    c.mesh.fsdp = -1                   # FSDP over all devices; set tensor=2 for TP
    c.retrieval.kind = "scann"         # e5-base-v2 over wiki-18; bm25 as the sparse option
    return c
