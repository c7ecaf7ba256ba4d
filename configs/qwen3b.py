"""Search-E1 with Qwen2.5-3B (instruct): the paper's setting on Search-R1's protocol.

    python -m searche1_jax.main --config=configs/qwen3b.py \
        --config.model.checkpoint=/models/Qwen2.5-3B-Instruct \
        --config.data.train=/data/nq_hotpotqa_train.parquet \
        --config.retrieval.kind=scann --config.retrieval.index=/indexes/wiki18_e5_scann
Variants (VARIANTS): --config=configs/qwen3b.py:base (Qwen2.5-3B base; the same ChatML prompt, METHOD §1).
Slices (SLICES), after a comma: --config=configs/qwen3b.py:instruct,v4-32 sizes the micro-batches
for that hardware (default 8xh100); the run refuses at startup a mesh its batch sizes do not fit
(`searche1_jax/train/geometry.py`), naming the field and the values that would.
"""
from searche1_jax.config import base

VARIANTS = ("instruct", "base")  # the string args get_config takes
# the documented hardware: (devices, processes) as the launchers start them (launch/README.md);
# the mesh is FSDP over all devices (mesh.fsdp = -1), so data x fsdp = devices
SLICES = {
    "8xh100": (8, 1),     # one node of 8 H100s, one process (README)
    "16xh100": (16, 2),   # 2 nodes x 8 H100s (launch/slurm.sbatch, one process a node; a process a GPU: 16)
    "v4-32": (16, 4),     # 4 TPU VMs x 4 v4 chips (launch/tpu_pod.sh)
    "v5e-64": (64, 16),   # 16 TPU VMs x 4 v5e chips
}
# rows a process decodes at once (rollout.max_rows): the chunk the planner picks for each slice,
# `python -m searche1_jax.plan --config=configs/qwen3b.py:instruct,SLICE --mesh=fsdp:N --device=D`
# (program_plan.pick_rollout_rows: the largest chunk whose decode / append / prefill fit beside the
# train state; tests/launch/test_plan.py keeps these equal to its picks); plan --aot checks them
# (16xh100: 160, below the 320 picked for 2 processes, so that one process a GPU, 160 rows each, runs it too)
ROLLOUT_ROWS = {"8xh100": 320, "16xh100": 160, "v4-32": 80, "v5e-64": 20}


def parse_arg(arg: str, name: str = "configs/qwen3b.py") -> tuple[str, str]:
    """"VARIANT[,SLICE]" -> (variant, slice)."""
    variant, _, slice_ = arg.partition(",")
    slice_ = slice_ or "8xh100"
    if variant not in VARIANTS:
        raise ValueError(f"{name} variants are {VARIANTS}, got {variant!r} (arg: VARIANT[,SLICE])")
    if slice_ not in SLICES:
        raise ValueError(f"{name} slices are {tuple(SLICES)}, got {slice_!r} (arg: VARIANT[,SLICE])")
    return variant, slice_


def get_config(arg: str = "instruct"):
    _, slice_ = parse_arg(arg)
    devices, _ = SLICES[slice_]
    c = base()
    c.model.checkpoint = ""            # a local HF directory of Qwen/Qwen2.5-3B(-Instruct): required
    c.model.architecture = "qwen2.5-3b"  # the checkpoint's shapes (plan.py); base and instruct share them
    # layers stacked and run by one lax.scan (model.scan_layers; RESULTS "scan over layers"): plan
    # --aot on fsdp 8 compiles the GRPO update 19x faster (1,973 -> 102 s; log-probs 398 -> 31 s)
    # and its per-device XLA temp falls 30.6 -> 10.3 GB (log-probs 14.5 -> 1.9 GB: unrolled, about
    # all 36 layers' all-gathered fp32 weights are live at once); the planner models it
    # (program_plan.py: two layers' gathered weights at a time). Rollouts decode from an unrolled
    # bf16 replica (rollout/weights.py::replica_config), so the scan costs decoding nothing. HF
    # checkpoints load and export per layer either way; a train-state checkpoint restores only in
    # its own layout (--config.model.scan_layers=False for one written unrolled).
    c.model.scan_layers = True
    # both variants render the prompt with the tokenizer's ChatML template (rollout.chat_template
    # "auto"): Qwen2.5 base tokenizers ship it and Search-R1's base runs used it (METHOD §1);
    # the variant only names which checkpoint you pass
    # ---- Search-R1's GRPO recipe (METHOD §2; Search-R1 train_grpo.sh with its vendored veRL) ----
    # 512 questions/step x G=5 = 2,560 trajectories; ppo_mini_batch_size=256 counts trajectories,
    # so 10 AdamW updates a step; micro-batch 8 trajectories a GPU; 1 PPO epoch.
    c.grpo.questions_per_step = 512    # data.train_batch_size
    c.rollout.group_size = 5           # actor_rollout_ref.rollout.n_agent
    c.grpo.mini_batch = 256            # actor.ppo_mini_batch_size (trajectories)
    # rows a forward/backward, global here (veRL's actor.ppo_micro_batch_size=8 is per GPU): one
    # trajectory per device, since data x fsdp must divide it (else replicated: geometry.py); 8 on
    # 8 GPUs, so agg="micro_token_mean" reproduces veRL's micro-batch pieces there
    c.grpo.micro_batch = devices
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
    c.grpo.steps_per_round = 50        # [choice] METHOD §3.6
    c.train.rounds = 20                # 20 x 50 = 1000 GRPO steps
    c.mesh.fsdp = -1                   # FSDP over all devices; set tensor=2 for TP
    c.ofsd.micro_batch = devices       # students a forward/backward: one per device (4 left 8 GPUs replicated)
    c.rollout.max_rows = ROLLOUT_ROWS[slice_]  # all 2,560 rows at once need ~5x an H100 (docs/SCALING.md)
    c.retrieval.kind = "scann"         # e5-base-v2 over wiki-18; bm25 as the sparse option
    return c
