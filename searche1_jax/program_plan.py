"""The shapes of each compiled program of a run, and the planner's per-device bytes for each.

`plan --aot` (`aot.py`) compiles the real programs at these shapes and sets XLA's numbers beside
these estimates. Pure functions of the config's numbers: no jax. Programs:

  grpo     one PPO update: grpo.mini_batch trajectories as [M, grpo.micro_batch, T] (train/loop.py)
  logps    the old / reference log-prob pass: grpo.micro_batch rows [mb, T] (layout.logps)
  ofsd     one OFSD update: ofsd.mini_batch students as [M, ofsd.micro_batch, ...]
  decode   a decode call of the rollout engine on every row of a rollout chunk (the first turn:
           all rows live), max_turn_tokens new tokens, window = the whole cache
  append   an observation appended to every row of the chunk (width max_obs_tokens padded as
           the engine pads it: `shapes.append_width`), window = the whole cache
  prefill  each distinct prompt of the chunk prefilled once and copied to its G rows

Sizes are worst cases at `--fill` (1 = the budgets used up): what the buffers must hold.
"""
from __future__ import annotations

import dataclasses

from searche1_jax.shapes import (append_width, next_pow2, policy_token_bound, round_up, row_bucket,
                                  rollout_chunk_ok, rollout_devices, rollout_phases)

PROGRAMS = ("grpo", "logps", "ofsd", "decode", "append", "prefill")
ROLLOUT_PROGRAMS = ("decode", "append", "prefill")


@dataclasses.dataclass(frozen=True)
class ProgramShapes:
    """Global array sizes of the programs (rows split over the batch devices of their mesh)."""
    train_len: int          # T: prompt + response, rounded up to grpo.length_bucket
    grpo_micro: int         # rows a GRPO forward/backward (global)
    grpo_steps: int         # M: micro-batches an update (mini_batch / micro_batch)
    ofsd_len: int           # student T, rounded up to ofsd.length_bucket
    teacher_len: int        # T2 = student + privileged context, rounded up likewise
    response_len: int       # R: response positions the KL covers (the sampled ones with
                            # train.head_on_loss_tokens), rounded up likewise
    ofsd_micro: int
    ofsd_steps: int
    rollout_rows: int       # rows one RowEngine holds (a chunk of a process's rows)
    rollout_devices: int    # devices those rows split over (data x fsdp, or a process's own)
    prompt_len: int         # prompt width, rounded up to rollout.prompt_bucket
    cache_len: int          # slots a row: prompt width + max_response_tokens
    max_new: int            # tokens a decode call may sample (max_turn_tokens)
    append_width: int       # tokens an append call carries a row (observation, bucketed)
    prefill_rows: int       # distinct prompts of a chunk, padded to the engine's row bucket
    prefill_window: int     # slots a prefill computes (a power of two >= the prompt)
    processes: int
    top_p: float
    top_k: int
    packed: bool            # rollout.engine "packed" (calls gather their rows) or "padded"
    replica: bool = True    # rollout.weights "replica" (a compute-dtype copy whole over data x fsdp) or "train"
    replica_tensor: int = 1  # several processes: a process's devices that split one replica (rollout.replica_tensor)
    head_len: int = 0       # K: positions the GRPO programs run the LM head at (`batching.head_positions`);
                            # 0: every position (train.head_on_loss_tokens off)


def program_shapes(c, run, mesh: dict[str, int], processes: int = 1, privileged_tokens: int = 128,
                   max_rows: int | None = None) -> ProgramShapes:
    """The shapes of `c` (an ExperimentConfig) on `mesh` ({"data", "fsdp", "tensor"}) with
    `processes` processes; `run` is plan.RunShape (prompt and fill assumptions). With one
    process the rollout uses the train mesh (rows over data x fsdp); with several each rolls out
    its own rows on its own devices, FSDP over them (`multihost.rollout_replica`).
    privileged_tokens: the context OFSD's teacher sequence adds (an assumption, like the prompt).
    max_rows: the rollout chunk in place of c.rollout.max_rows (`pick_rollout_rows` tries them)."""
    max_rows = c.rollout.max_rows if max_rows is None else max_rows
    devices = mesh["data"] * mesh["fsdp"] * mesh["tensor"]
    g = c.grpo
    bucket = lambda n, b: max(b, round_up(n, b))  # noqa: E731  (batching.bucket_length)
    response = run.sampled_tokens + run.obs_tokens
    rows = max(g.questions_per_step * c.rollout.group_size,
               c.ofsd.questions * c.ofsd.group_size if c.ofsd.enabled else 0) // processes
    group = c.rollout.group_size
    chunk = rows if max_rows <= 0 else min(rows, max(1, max_rows // group) * group)
    prompt = round_up(run.prompt_tokens, c.rollout.prompt_bucket)
    train_len = bucket(run.seq_len, g.length_bucket)
    head = c.train.head_on_loss_tokens   # the trainer's floor for K (train/loop.py)
    floor = policy_token_bound(c.rollout.max_turns, c.rollout.max_turn_tokens, c.rollout.max_response_tokens)
    return ProgramShapes(
        train_len=train_len, grpo_micro=g.micro_batch,
        grpo_steps=max(g.mini_batch // g.micro_batch, 1),
        ofsd_len=bucket(run.seq_len, c.ofsd.length_bucket),
        teacher_len=bucket(run.seq_len + privileged_tokens, c.ofsd.length_bucket),
        response_len=bucket(run.sampled_tokens if head else response, c.ofsd.length_bucket),
        ofsd_micro=c.ofsd.micro_batch,
        ofsd_steps=max(c.ofsd.mini_batch // c.ofsd.micro_batch, 1),
        rollout_rows=chunk,
        rollout_devices=rollout_devices(mesh["data"] * mesh["fsdp"], devices, processes, c.rollout.replica_tensor),
        prompt_len=prompt, cache_len=prompt + run.max_response_tokens, max_new=c.rollout.max_turn_tokens,
        append_width=(append_width if c.rollout.engine == "packed" else round_up)(
            c.rollout.max_obs_tokens, c.rollout.prompt_bucket),
        prefill_rows=row_bucket(max(chunk // group, 1), chunk, c.rollout.row_buckets),
        prefill_window=min(next_pow2(run.prompt_tokens, 64), prompt + run.max_response_tokens),
        processes=processes, top_p=float(c.rollout.top_p), top_k=int(c.rollout.top_k),
        packed=c.rollout.engine == "packed",
        # `rollout/weights.py` makes no copy where it would change nothing
        replica=c.rollout.weights == "replica" and not (devices == 1 and c.model.param_dtype == c.model.dtype),
        replica_tensor=c.rollout.replica_tensor if processes > 1 else 1,
        head_len=min(train_len - 1, floor) if head else 0)


def program_memory(m, run, mesh: dict[str, int], s: ProgramShapes) -> dict[str, dict[str, float]]:
    """Per-device bytes of each program: {program: {"program": its own buffers (arguments,
    outputs not aliased to them, temporaries), "resident": train state the program does not
    take but that stays on the device meanwhile, and the parts of "program"}}.

    m: ModelConfig; run: plan.RunShape; mesh: {"data", "fsdp", "tensor"} (the train mesh).
    What each counts is beside each formula; docs/SCALING.md ("What the compiler says") compares
    them with XLA's bytes of the compiled programs.
    """
    from searche1_jax.plan import activation_bytes_per_token_layer, dtype_bytes
    from searche1_jax.rl.fused_kl_tiles import VOCAB_CHUNK
    d_, f, t = mesh["data"], mesh["fsdp"], mesh["tensor"]
    batch_dev, shard = d_ * f, f * t
    n, L, d, v = m.num_params, m.n_layers, m.d_model, m.vocab_size
    pb, cb = dtype_bytes(run.param_dtype), dtype_bytes(run.dtype)
    params = n * pb / shard
    adam = 2 * n * 4 / shard
    # FSDP all-gathers each layer's weights (in the param dtype) where it is used; XLA:CPU's
    # scheduler issues every layer's gather before the first layer runs (the unrolled layers do
    # not depend on each other's weights), so the whole model is live at once: measured with
    # --aot (docs/SCALING.md). GPU / TPU schedulers that bound memory may keep fewer layers.
    # With model.scan_layers the layers are one loop: a layer's gather sits inside its body, so
    # two layers' weights are live (the one computing and the next, prefetched) beside the
    # weights outside the layers (embedding / head, final norm), gathered whole. Measured with
    # --aot at Qwen2.5-3B on fsdp 8 (RESULTS "a scan over layers"): the log-prob pass's temp 14.5 ->
    # 1.9 GB, the GRPO update's 30.6 -> 10.3 GB.
    # Outside the layers, the embedding (forward only: its gradient is a scatter into the shard)
    # and the head (an untied model's own matrix) are used in different phases, so the larger
    # one is live at a time (measured at 7B, untied: counting both put the scanned GRPO update at
    # 1.21x XLA's, the log-prob pass at 1.20-1.36x)
    outside = n - L * m.block_params
    if not m.tie_embeddings:
        outside -= v * d
    live = outside + 2 * m.block_params if m.scan_layers else n
    gathered = live * pb / t if f * d_ > 1 else 0.0
    # an update also keeps the compute-dtype copies of the weights its backward multiplies by
    # (measured: the GRPO update's temp is 0.9x the estimate with them, 0.73x without)
    compute_copy = live * cb / t
    host_split = batch_dev if s.processes > 1 else 1   # one process: numpy batches, replicated

    def forward(rows: int, seq: int) -> dict[str, float]:
        """Activations of a forward/backward of `rows` global rows of `seq` tokens."""
        rows_dev = rows // batch_dev if rows % batch_dev == 0 else rows
        tokens = rows_dev * seq
        lin, att = activation_bytes_per_token_layer(m, run, seq)
        block = tokens * (lin + att / t)             # one block's full set (the remat recompute)
        saved = L * tokens * d * cb if run.remat else L * block
        return {"tokens": tokens, "block": block, "saved": saved, "hidden": tokens * d * cb}

    out: dict[str, dict[str, float]] = {}
    # ---- GRPO update: params and AdamW donated; grads = accumulator + one micro-batch's, and
    # the update optax builds (3 x params in the param dtype)
    T, M, mb = s.train_len, s.grpo_steps, s.grpo_micro
    ref = params if run.reference_resident else 0.0  # config.train.reference_resident off: parked on disk
    held = adam if run.optimizer_resident else 0.0   # AdamW beside programs other than the updates
    fw = forward(mb, T)
    K = s.head_len or T - 1   # old / ref log-probs at the head positions (and their int32 indices)
    batch = M * mb * (T * (4 + 1 + 4) + K * 8 + s.head_len * 4 + 4) / host_split
    logits = run.grpo_chunk * v * 4 * 3 / t
    grads = 3 * n * pb / shard
    out["grpo"] = {"params": params, "adam": adam, "batch": batch, "grads_and_update": grads,
                   "gathered_weights": gathered + compute_copy,
                   "activations": fw["saved"] + (fw["block"] if run.remat else 0.0), "logits_chunk": logits,
                   "resident": ref}  # the reference params
    # ---- log-prob pass: forward only, one block live at a time, the hidden state and a chunk
    fw = forward(mb, T)
    out["logps"] = {"params": params, "batch": mb * T * 5 / host_split, "gathered_weights": gathered,
                    "activations": fw["block"] + 2 * fw["hidden"],
                    "logits_chunk": run.grpo_chunk * v * 4 * 2 / t,
                    "resident": held + params}  # AdamW and the other of params / reference params
    if m.scan_layers and f * d_ > 1:
        # scanned, the pass has two phases that do not overlap: the layers (two layers' weights
        # and one block's activations) and the head (the gathered embedding / head and one
        # [chunk, V] block, the log-softmax written over it): its peak is the larger. Measured at
        # 3B, fsdp 8: XLA's peak 3.47 GB = params 1.54 + the head phase
        layers = {"gathered_weights": 2 * m.block_params * pb / t,
                  "activations": fw["block"] + 2 * fw["hidden"], "logits_chunk": 0.0}
        head = {"gathered_weights": outside * pb / t, "activations": fw["hidden"],
                "logits_chunk": run.grpo_chunk * v * 4 / t}
        out["logps"].update(max(layers, head, key=lambda phase: sum(phase.values())))
    # ---- OFSD update: + the frozen teacher (an argument) and its forward (stop-gradient: one
    # block live, and its hidden state kept)
    Ts, T2, R, M, mb = s.ofsd_len, s.teacher_len, s.response_len, s.ofsd_steps, s.ofsd_micro
    fw, tw = forward(mb, Ts), forward(mb, T2)
    batch = M * mb * (Ts * 5 + T2 * 5 + R * 12) / host_split
    vc = min(VOCAB_CHUNK, v)
    logits = (run.ofsd_chunk * v * 4 * 3 + d * vc * 4 + d * v * 4) / t
    out["ofsd"] = {"params": params, "adam": adam, "teacher": params, "batch": batch, "grads_and_update": grads,
                   # student and teacher: unrolled, XLA:CPU gathers both models up front; scanned,
                   # the teacher's forward loop and the student's do not overlap (measured at 3B,
                   # fsdp 8: counting both put the estimate at 1.29x XLA's)
                   "gathered_weights": (1 if m.scan_layers else 2) * gathered + compute_copy,
                   "activations": fw["saved"] + (fw["block"] if run.remat else 0.0) + tw["hidden"],
                   "logits_chunk": logits, "resident": ref}
    # ---- rollout: the engine's calls on one chunk of rows
    r = s.rollout_devices
    # rollout.weights: "replica" decodes from a compute-dtype copy whole on each device of the
    # rollout (split over tensor with one process): nothing gathered; "train" from the params
    # bound in place (one process) or FSDP over the process's devices (several)
    # XLA:CPU multiplies bf16 by converting the weights to an fp32 copy, hoisted out of the token
    # loop (measured: a bf16 [4096, 4096] matmul in a loop keeps a 67 MB f32 temp), so --aot's
    # CPU compile holds n x 4 / t beside a bf16 replica; counted here, so the estimate agrees with
    # --aot. A GPU's or TPU's bf16 dots need no copy: there it is a pessimistic bound.
    upcast = n * 4 / t if cb < 4 else 0.0
    if s.processes == 1 and s.replica:
        weights, resident, gathered, upcast = n * cb / t, params + ref + held, 0.0, upcast
    elif s.processes == 1:
        weights, resident, gathered, upcast = params, held + ref, gathered, 0.0
    elif s.replica:  # whole, or split over rollout.replica_tensor of the process's devices
        rt_ = s.replica_tensor
        weights, resident, gathered, upcast = n * cb / rt_, params + ref + held, 0.0, upcast * t / rt_
    else:
        weights, resident, gathered, upcast = n * cb / r, params + ref + held, n * cb if r > 1 else 0.0, 0.0
    # a process-local replica's mesh splits over rollout.replica_tensor (1: no tensor axis)
    rt = t if s.processes == 1 else s.replica_tensor
    kv = r * (rt if m.n_kv_heads % rt == 0 else 1)
    b, S = s.rollout_rows, s.cache_len
    cache = 2 * L * b * S * m.n_kv_heads * m.head_dim * cb / kv
    row_logits = b * v * 4 / r
    heads = r * (rt if m.n_heads % rt == 0 else 1)
    # decode: two copies of the cache besides the donated one, the loop's carry and the cache it
    # writes (measured with "padded", which gathers nothing); the packed engine's call on every
    # row also gathers them, each device its own rows (`rollout.packing`), into a third copy
    # (measured, Qwen2.5-3B on 8 x H100: decode temp +51.5 GB over padded, the cache shard 51.5 GB;
    # issue 20). top-p sorts [B, V]
    working = (3 if s.packed else 2) * cache
    out["decode"] = {"weights": weights, "gathered_weights": gathered, "cpu_upcast": upcast, "cache": cache,
                     "working_cache": working,
                     "row_logits": row_logits, "sampling": 6 * row_logits, "resident": resident}
    # append: + the fp32 scores of one query block of the appended tokens against every slot,
    # and their softmax (`attend_cached`: blocks of model.attn_block under a lax.map)
    w = min(s.append_width, m.attn_block) if m.attn_block > 0 else s.append_width
    # and the appended tokens' MLP gate and up projections [rows, width, mlp] in fp32 (measured:
    # without them the estimate was 0.96x XLA's at 3B, 320 rows on 8 devices, 1.8 GB short)
    mlp = 2 * b * s.append_width * m.mlp_dim * 4 / (r * (rt if m.mlp_dim % rt == 0 else 1))
    out["append"] = {"weights": weights, "gathered_weights": gathered, "cpu_upcast": upcast, "cache": cache,
                     "working_cache": working,
                     "row_logits": row_logits, "scores": 2 * b * m.n_heads * w * S * 4 / heads, "mlp": mlp,
                     "resident": resident}
    # prefill: the distinct prompts' own cache (window slots), spread to every row ("padded":
    # every row appends its own prompt)
    u, W = (s.prefill_rows, s.prefill_window) if s.packed else (b, s.prefill_window)
    out["prefill"] = {"weights": weights, "gathered_weights": gathered, "cpu_upcast": upcast, "cache": cache,
                      "prompt_cache": 2 * L * (u + b if s.packed else b) * W * m.n_kv_heads * m.head_dim * cb / kv,
                      "row_logits": row_logits + (u * v * 4 / r if s.packed else 0.0),
                      "scores": u * m.n_heads * s.prompt_len * W * 4 / heads, "resident": resident}
    for parts in out.values():
        parts["program"] = sum(x for k, x in parts.items() if k != "resident")
    return out


def pick_rollout_rows(c, m, run, mesh: dict[str, int], device: str, processes: int = 1,
                      privileged_tokens: int = 128) -> dict:
    """The rollout chunk the planner picks: the largest `rollout.max_rows` the run's geometry
    allows (`shapes.rollout_chunk_ok`) whose decode, append and prefill calls, with the train
    state they leave resident, each fit `device`'s budget by `program_memory`'s estimate (which
    agrees with XLA's compiled bytes within a few percent for these calls: docs/SCALING.md), less
    the fp32 weight copy only XLA:CPU makes ("cpu_upcast"; `aot.cpu_upcast_bytes`).

    Returns {"max_rows", "fits" (False: not even the smallest valid chunk fits), "budget",
    "totals" {program: bytes of the picked chunk}}. m: ModelConfig (with the run's dtypes and
    scan_layers); run: plan.RunShape; mesh {"data", "fsdp", "tensor"}."""
    from searche1_jax.plan import DEVICES
    if device not in DEVICES:
        raise ValueError(f"device must be one of {sorted(DEVICES)}, got {device!r}")
    budget = DEVICES[device].budget_bytes
    phases = [(rows, group) for _, rows, group in rollout_phases(c, processes)]
    r = program_shapes(c, run, mesh, processes, privileged_tokens).rollout_devices
    most = max((rows for rows, _ in phases), default=0)
    valid = [v for v in range(most, 0, -1) if rollout_chunk_ok(v, phases, r)]
    if not valid:
        raise ValueError(f"no rollout.max_rows splits the rows {[rows for rows, _ in phases]} into whole groups "
                         f"over {r} devices: change the questions a step / round or the group sizes")
    totals = {}
    for v in valid:  # largest first
        est = program_memory(m, run, mesh, program_shapes(c, run, mesh, processes, privileged_tokens, v))
        totals = {p: est[p]["program"] - est[p]["cpu_upcast"] + est[p]["resident"] for p in ROLLOUT_PROGRAMS}
        if max(totals.values()) <= budget:
            return {"max_rows": v, "fits": True, "budget": budget, "totals": totals}
    return {"max_rows": valid[-1], "fits": False, "budget": budget, "totals": totals}
