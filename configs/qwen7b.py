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
    # ---- Search-R1's GRPO recipe (METHOD §2; Search-R1 train_grpo.sh with its vendored veRL) ----
    # 512 questions/step x G=5 = 2,560 trajectories; ppo_mini_batch_size=256 counts trajectories,
    # so 10 AdamW updates a step; micro-batch 8 trajectories a GPU; 1 PPO epoch.
    c.grpo.questions_per_step = 512    # data.train_batch_size
    c.rollout.group_size = 5           # actor_rollout_ref.rollout.n_agent
    c.grpo.mini_batch = 256            # actor.ppo_mini_batch_size (trajectories)
    c.grpo.micro_batch = 8             # actor.ppo_micro_batch_size per GPU (global rows here)
    c.grpo.epochs = 1                  # actor.ppo_epochs
    c.grpo.clip_eps = 0.2              # actor.clip_ratio
    c.grpo.kl_estimator = "k3"         # actor.kl_loss_type=low_var_kl, clamped to [-10, 10]
    c.grpo.kl_coef = 0.001             # actor.kl_loss_coef
    c.grpo.entropy_coef = 0.001        # actor.entropy_coeff (veRL default)
    c.grpo.agg = "token-mean"          # exact; "micro_token_mean" reproduces veRL's aggregation
    # lr 1e-6 warmed up linearly over floor(0.285 x S) GRPO steps (veRL's constant-with-warmup
    # scheduler steps once a training step); S = 1005 steps is about 3 epochs of NQ+HotpotQA
    # (169,615 questions, 331 steps an epoch)
    c.train.lr = 1e-6                  # actor.optim.lr
    c.train.warmup_ratio = 0.285       # actor.optim.lr_warmup_steps_ratio
    c.train.weight_decay = 0.01        # veRL's AdamW default
    c.train.grad_clip = 1.0            # actor.grad_clip
    c.rollout.temperature = 1.0        # rollout.temperature
    c.rollout.top_p = 0.95             # veRL's GRPO rollout top-p (Search-R1 never overrides it)
    c.rollout.max_turns = 4            # max_turns
    c.retrieval.topk = 3               # retriever.topk
    c.rollout.max_turn_tokens = 500    # max_response_length per turn
    c.rollout.max_obs_tokens = 500     # max_obs_length
    c.rollout.max_prompt_tokens = 4096  # data.max_prompt_length
    c.rollout.reward_text = "policy"   # ours; "search_r1" reads qa_em.py's way (prompt + response)
    c.mesh.fsdp = -1
    c.mesh.tensor = 1
    c.retrieval.kind = "scann"
    return c
