"""Search-E1 with Qwen2.5-7B (instruct): same protocol, larger model (untied head, 28/4 heads)."""
from searche1_jax.config import base

VARIANTS = ("instruct", "base")  # the string args get_config takes


def get_config(arg: str = "instruct"):
    if arg not in VARIANTS:
        raise ValueError(f"configs/qwen7b.py variants are {VARIANTS}, got {arg!r}")
    c = base()
    c.model.checkpoint = ""            # a local HF directory of Qwen/Qwen2.5-7B(-Instruct): required
    c.model.architecture = "qwen2.5-7b"  # the checkpoint's shapes (plan.py); base and instruct share them
    # both variants render the prompt with the tokenizer's ChatML template (rollout.chat_template
    # "auto"): Qwen2.5 base tokenizers ship it and Search-R1's base runs used it (METHOD §1);
    # the variant only names which checkpoint you pass
    c.grpo.questions_per_step = 512
    c.grpo.mini_batch = 256            # trajectories per update (Search-R1's ppo_mini_batch_size): 10 a step
    c.grpo.micro_batch = 8             # global rows per micro-batch: a multiple of data x fsdp (8 GPUs -> 1 row each)
    c.mesh.fsdp = -1
    c.mesh.tensor = 1
    c.retrieval.kind = "scann"
    return c
