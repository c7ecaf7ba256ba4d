"""Capacity planner: per-device memory and estimated step time of a config on a mesh and device.

    python -m searche1_jax.plan --config=configs/qwen3b.py --mesh=fsdp:8,tensor:1 --device=h100
    python -m searche1_jax.plan --config=configs/qwen7b.py --mesh=fsdp:64 --device=v5e --fill=0.3
    python -m searche1_jax.plan --config=configs/qwen3b.py --mesh=fsdp:8 --device=h100 --aot

--aot compiles the real programs at the config's shapes on fake CPU devices and prints XLA's
per-device bytes beside these estimates (`aot.py`, `program_plan.py`).

Every number is an *estimate* from formulas (stated next to the code), never a measurement.
Pure functions (`memory_plan`, `time_plan`, `plan`) return dicts of numbers; `format_plan` prints.

Mesh: data D x fsdp F x tensor T devices. Parameters, gradients and optimiser state are sharded
over fsdp x tensor (replicated over data); activations and the KV cache over the batch (data x
fsdp) and, where the head count divides, over tensor. Sharding is taken as ideal (every dim
divides), which `sharding.py` does not guarantee (e.g. 2 KV heads on tensor=4 replicate).
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys

from searche1_jax.model.config import PRESETS, ModelConfig, get_preset
from searche1_jax.model.sharding import check_model_split
from searche1_jax.rl.fused_kl_tiles import VOCAB_CHUNK
from searche1_jax.shapes import round_up


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
    name: str
    peak_flops: float   # dense bf16 FLOP/s per device (one JAX device = one GPU / one TPU chip)
    hbm_bw: float       # bytes/s
    hbm_bytes: float    # bytes of accelerator memory
    link_bw: float      # bytes/s one device can receive from its peers (all-gather estimate)
    platform: str = "gpu"  # "gpu" | "tpu": how much of hbm_bytes JAX's allocator takes (MEM_FRACTION)

    @property
    def usable_bytes(self) -> float:
        """The memory JAX's allocator works in: on GPU it preallocates XLA_PYTHON_CLIENT_MEM_FRACTION
        (default 0.75) of HBM and never grows past it; on TPU all of HBM."""
        return self.hbm_bytes * MEM_FRACTION[self.platform]

    @property
    def budget_bytes(self) -> float:
        """What a program's buffers may take: HEADROOM of the usable memory (fragmentation, the
        runtime's own buffers)."""
        return HEADROOM * self.usable_bytes


# Vendor spec sheets (dense bf16, no sparsity). link_bw: H100 NVLink4 900 GB/s bidirectional
# -> 450 GB/s each way; TPU ICI per chip: v4 2400 Gbit/s, v5e 1600 Gbit/s.
DEVICES = {
    "h100": DeviceSpec("H100 SXM", 989e12, 3.35e12, 80e9, 450e9, "gpu"),
    "v5e": DeviceSpec("TPU v5e chip", 197e12, 819e9, 16e9, 200e9, "tpu"),
    "v4": DeviceSpec("TPU v4 chip", 275e12, 1.2e12, 32e9, 300e9, "tpu"),
}
# JAX's GPU client preallocates this fraction of HBM (XLA_PYTHON_CLIENT_MEM_FRACTION's default)
MEM_FRACTION = {"gpu": 0.75, "tpu": 1.0}
HEADROOM = 0.9   # of the usable memory, a plan leaves 10% free

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def dtype_bytes(name: str) -> int:
    if name not in _DTYPE_BYTES:
        raise ValueError(f"unknown dtype {name!r}; known: {sorted(_DTYPE_BYTES)}")
    return _DTYPE_BYTES[name]


@dataclasses.dataclass(frozen=True)
class RunShape:
    """The numbers of a config that size a step (field names follow searche1_jax.config.base())."""
    questions_per_step: int
    group_size: int
    micro_batch: int          # trajectories per forward/backward (global, sharded over the batch)
    epochs: int
    max_turns: int
    max_turn_tokens: int
    max_obs_tokens: int
    max_response_tokens: int
    prompt_tokens: int        # assumed prompt length (the config only has the guard max_prompt_tokens)
    fill: float               # fraction of the turn/observation budgets a trajectory uses
    grpo_chunk: int
    ofsd_chunk: int
    param_dtype: str
    dtype: str
    remat: bool
    rollout_weights: str = "replica"   # config.rollout.weights: "replica" (gathered once a step) or "train"
    reference_resident: bool = True    # config.train.reference_resident (off: the reference parked on disk)
    optimizer_resident: bool = True    # config.train.optimizer_resident (off: AdamW parked between updates)
    head_on_loss_tokens: bool = True   # config.train.head_on_loss_tokens (off: the LM head at every position)

    @property
    def rows(self) -> int:
        return self.questions_per_step * self.group_size

    @property
    def sampled_tokens(self) -> int:
        """Policy tokens per trajectory: fill x (max_turns + 1) turns x max_turn_tokens, capped."""
        return min(int(self.fill * (self.max_turns + 1) * self.max_turn_tokens), self.max_response_tokens)

    @property
    def obs_tokens(self) -> int:
        """Observation tokens per trajectory: fill x max_turns x max_obs_tokens, within the budget."""
        return min(int(self.fill * self.max_turns * self.max_obs_tokens),
                   self.max_response_tokens - self.sampled_tokens)

    @property
    def seq_len(self) -> int:
        """Train sequence: prompt + sampled + observations."""
        return self.prompt_tokens + self.sampled_tokens + self.obs_tokens

    @property
    def cache_len(self) -> int:
        """KV cache slots per row, as the agent allocates them: prompt + max_response_tokens."""
        return self.prompt_tokens + self.max_response_tokens


def run_shape_from_config(c, *, prompt_tokens: int = 256, fill: float = 1.0) -> RunShape:
    if not 0 < fill <= 1:
        raise ValueError(f"--fill must be in (0, 1], got {fill}")
    return RunShape(
        questions_per_step=c.grpo.questions_per_step, group_size=c.rollout.group_size,
        micro_batch=c.grpo.micro_batch, epochs=c.grpo.epochs, max_turns=c.rollout.max_turns,
        max_turn_tokens=c.rollout.max_turn_tokens, max_obs_tokens=c.rollout.max_obs_tokens,
        max_response_tokens=c.rollout.max_response_tokens, prompt_tokens=prompt_tokens, fill=fill,
        grpo_chunk=c.grpo.logit_chunk, ofsd_chunk=c.ofsd.logit_chunk,
        param_dtype=c.model.param_dtype, dtype=c.model.dtype, remat=bool(c.model.remat),
        rollout_weights=c.rollout.weights, reference_resident=bool(c.train.reference_resident),
        optimizer_resident=bool(c.train.optimizer_resident), head_on_loss_tokens=bool(c.train.head_on_loss_tokens))


def model_config_for(c, name: str = "") -> ModelConfig:
    """The ModelConfig a config trains: `name` (--model), else config.model.preset, else
    config.model.architecture (the preset whose shapes config.model.checkpoint has)."""
    name = name or c.model.preset or c.model.architecture
    if not name:
        raise ValueError("cannot tell which model this config trains: set config.model.architecture to the "
                         "preset whose shapes config.model.checkpoint has, or pass --model=PRESET (one of "
                         f"{sorted(PRESETS)})")
    return get_preset(name)


def parse_mesh(text: str) -> dict[str, int]:
    """"fsdp:8,tensor:1" -> {"data": 1, "fsdp": 8, "tensor": 1}."""
    mesh = {"data": 1, "fsdp": 1, "tensor": 1}
    for part in filter(None, text.split(",")):
        axis, _, size = part.partition(":")
        if axis not in mesh or not size.isdigit() or int(size) < 1:
            raise ValueError(f"--mesh wants axis:size pairs over data/fsdp/tensor, e.g. fsdp:8,tensor:1; "
                             f"got {part!r}")
        mesh[axis] = int(size)
    return mesh


def attended_keys(m: ModelConfig, seq: int) -> float:
    """Mean number of keys one query's scores cover in the training forward.

    `attend_causal` splits the queries into blocks of m.attn_block and gives block [i0, i1) the
    keys [0, i1); with attn_block = 0 (or seq <= attn_block) every query covers all seq keys.
    """
    c = m.attn_block
    if c <= 0 or seq <= c:
        return float(seq)
    return sum(min(c, seq - i0) * min(i0 + c, seq) for i0 in range(0, seq, c)) / seq


def activation_bytes_per_token_layer(m: ModelConfig, run: RunShape, seq: int) -> tuple[int, float]:
    """(linear, attention) bytes one token keeps for the backward pass of one block, no remat.

    linear = (4d + 3·h·hd + 3·kv·hd + 4·mlp) x bytes(dtype): two norm inputs/outputs (4d);
    q, roped q, attention output (3·h·hd); k, roped k, v (3·kv·hd); gate, up, silu(gate),
    gate·up (4·mlp). attention = h x keys x 6: our `attend` materialises fp32 softmax output
    (4 B) and its compute-dtype copy (2 B) over the keys of the query's block
    (`attended_keys`); no flash attention.
    """
    b = dtype_bytes(run.dtype)
    hd, h, k = m.head_dim, m.n_heads, m.n_kv_heads
    linear = (4 * m.d_model + 3 * h * hd + 3 * k * hd + 4 * m.mlp_dim) * b
    return linear, h * attended_keys(m, seq) * 6


def batch_split(run: RunShape, mesh: dict[str, int]) -> int:
    """Ways a train micro-batch splits over data x fsdp: all of them, or 1 when it does not divide."""
    n = mesh["data"] * mesh["fsdp"]
    return n if run.micro_batch % n == 0 else 1


def memory_plan(m: ModelConfig, run: RunShape, mesh: dict[str, int]) -> dict[str, float]:
    """Bytes per device of each resident buffer (see module docstring for the sharding)."""
    d_, f, t = mesh["data"], mesh["fsdp"], mesh["tensor"]
    n = m.num_params
    shard = f * t
    pb, cb = dtype_bytes(run.param_dtype), dtype_bytes(run.dtype)
    out = {"num_params": float(n), "devices": float(d_ * f * t)}
    out["params"] = n * pb / shard
    # optax AdamW keeps the master copy only when params are stored below fp32
    out["master_fp32"] = n * 4 / shard if pb < 4 else 0.0
    out["adam_mv_fp32"] = n * 8 / shard
    # the scan in train/steps.py holds the accumulated gradients plus one micro-batch's gradients
    out["grads"] = 2 * n * pb / shard
    # GRPO reference policy (TrainState.ref_params); parked on disk with reference_resident off
    out["ref_params"] = n * pb / shard if run.reference_resident else 0.0
    out["ofsd_teacher"] = n * pb / shard               # frozen theta_k snapshot, OFSD rounds only

    # sharding.py drops a mesh axis that does not divide a dim: such a micro-batch is replicated
    split = batch_split(run, mesh)
    rows_dev = run.micro_batch // split
    out["micro_batch_replicated"] = float(split == 1 and d_ * f > 1)
    tokens_dev = rows_dev * run.seq_len
    lin, att = activation_bytes_per_token_layer(m, run, run.seq_len)
    per_layer = tokens_dev * (lin + att / t)
    out["act_tokens_per_device"] = float(tokens_dev)
    out["activations_no_remat"] = m.n_layers * per_layer
    # remat: each block keeps its input [tokens, d]; one block's full set is live while recomputed
    out["activations_remat"] = m.n_layers * tokens_dev * m.d_model * cb + per_layer
    v = m.vocab_size
    # GRPO chunked log-prob/entropy: logits, softmax, dlogits [chunk, V] fp32 (factor 3)
    out["grpo_logits_chunk"] = run.grpo_chunk * v * 4 * 3 / t
    # OFSD fused KL (divergence.py, gradient formed in the forward pass): z_S, z_T, dz [chunk, V]
    # fp32 (factor 3), one [d, vocab_chunk] head-gradient slice, and the fp32 [d, V] head-gradient
    # accumulator held until the backward pass (beside the gradients counted above)
    vc = min(VOCAB_CHUNK, v)
    out["ofsd_logits_chunk"] = (run.ofsd_chunk * v * 4 * 3 + m.d_model * vc * 4
                                + m.d_model * v * 4) / t

    kv_shard = (d_ * f) * (t if m.n_kv_heads % t == 0 else 1)
    out["rollout_rows"] = float(run.rows)
    out["kv_cache"] = (2 * m.n_layers * run.rows * run.cache_len * m.n_kv_heads * m.head_dim * cb
                       / kv_shard)
    # extend() over an observation/prompt chunk builds fp32 scores [rows, h, width, cache_len],
    # one query block of model.attn_block at a time (`attend_cached`)
    width = max(run.prompt_tokens, round_up(run.max_obs_tokens, 64))
    width = min(width, m.attn_block) if m.attn_block > 0 else width
    out["rollout_scores_transient"] = (run.rows * m.n_heads * width * run.cache_len * 4
                                       / ((d_ * f) * (t if m.n_heads % t == 0 else 1)))
    states = out["params"] + out["master_fp32"] + out["adam_mv_fp32"] + out["ref_params"]
    act = out["activations_remat"] if run.remat else out["activations_no_remat"]
    out["peak_train"] = states + out["grads"] + act + out["grpo_logits_chunk"]
    # the decode replica (rollout.weights "replica"): the weights in the compute dtype, whole over data x fsdp
    out["rollout_weights"] = n * cb / t if run.rollout_weights == "replica" else 0.0
    out["peak_rollout"] = states + out["rollout_weights"] + out["kv_cache"] + out["rollout_scores_transient"]
    out["peak_ofsd"] = (states + out["ofsd_teacher"] + out["grads"] + 2 * act
                        + out["ofsd_logits_chunk"])  # student and teacher forwards
    return out


def time_plan(m: ModelConfig, run: RunShape, mesh: dict[str, int], dev: DeviceSpec, *,
              mfu: float = 0.4, bw_util: float = 0.7) -> dict[str, float]:
    """Tokens and estimated seconds of one GRPO step (rollout + old/ref log-probs + update).

    N = num_params (a tied embedding counts once, as the LM-head matmul; lookups are free).
    train FLOPs = epochs·(6N'·tok + 6H·head + 3·A) + 2·(2N'·tok + 2H·head + A)  (update; old and
      ref log-prob passes), H = V·d the LM head, N' = N − H, head = the positions it runs at
      (every token; with head_on_loss_tokens the sampled ones),
      A = 4·L·h·hd·T·keys per row (QKᵀ and PV over each query block's keys, `attended_keys`).
    rollout FLOPs = 2N per sampled or appended token + 4·L·h·hd·cache_len per token.
    Decode is bandwidth-bound: each of the (lockstep) decode steps reads the device's weights
    in the compute dtype (all of them under FSDP, 1/T under TP) and its KV cache shard at
    bw_util x HBM bandwidth, and under FSDP all-gathers the other (F-1)/F of the weights: at
    every step (rollout.weights "train"), or once a step into the decode replica ("replica").
    Compute runs at mfu x peak. Retrieval and host work are not counted. A micro-batch that
    data x fsdp does not divide is replicated by sharding.py, so its update work repeats.
    """
    devices = mesh["data"] * mesh["fsdp"] * mesh["tensor"]
    n, rows, f, t = m.num_params, run.rows, mesh["fsdp"], mesh["tensor"]
    cb = dtype_bytes(run.dtype)
    seq = run.seq_len
    train_tokens = rows * seq
    attn = 4 * m.n_layers * m.n_heads * m.head_dim * seq * attended_keys(m, seq) * rows
    head = m.vocab_size * m.d_model
    head_tokens = rows * run.sampled_tokens if run.head_on_loss_tokens else train_tokens
    body = (n - head) * train_tokens + head * head_tokens
    train_flops = run.epochs * (6 * body + 3 * attn) + 2 * (2 * body + attn)
    appended = run.prompt_tokens + run.obs_tokens
    rollout_tokens = rows * (run.sampled_tokens + appended)
    rollout_flops = rollout_tokens * (2 * n + 4 * m.n_layers * m.n_heads * m.head_dim * run.cache_len)
    decode_steps = run.sampled_tokens            # rows decode in lockstep; the longest row decides
    kv_dev = memory_plan(m, run, mesh)["kv_cache"]
    weights_dev = n * cb / t
    step_bytes = weights_dev + kv_dev
    gather = n * cb / t * (f - 1) / f / dev.link_bw if f > 1 else 0.0
    per_step_gather, once = (0.0, gather) if run.rollout_weights == "replica" else (gather, 0.0)
    decode_s = decode_steps * (step_bytes / (dev.hbm_bw * bw_util) + per_step_gather) + once
    rollout_compute_s = rollout_flops / (devices * dev.peak_flops * mfu)
    # a replicated micro-batch (see batch_split) repeats the update's work on every data x fsdp device
    train_s = train_flops / (devices * dev.peak_flops * mfu) * (mesh["data"] * f / batch_split(run, mesh))
    rollout_s = max(decode_s, rollout_compute_s)
    return {"train_tokens": float(train_tokens), "rollout_tokens": float(rollout_tokens),
            "sampled_tokens": float(rows * run.sampled_tokens), "train_flops": float(train_flops),
            "rollout_flops": float(rollout_flops), "decode_steps": float(decode_steps),
            "decode_step_s": decode_s / max(decode_steps, 1), "rollout_compute_s": rollout_compute_s,
            "rollout_s": rollout_s, "train_s": train_s, "step_s": rollout_s + train_s}


def plan(m: ModelConfig, run: RunShape, mesh: dict[str, int], device: str, *, mfu: float = 0.4,
         bw_util: float = 0.7) -> dict:
    if device not in DEVICES:
        raise ValueError(f"--device must be one of {sorted(DEVICES)}, got {device!r}")
    dev = DEVICES[device]
    mem = memory_plan(m, run, mesh)
    # rollout rows one call can hold in the budget (KV cache and extend scores grow with rows)
    per_row = (mem["kv_cache"] + mem["rollout_scores_transient"]) / run.rows
    resident = mem["peak_rollout"] - mem["kv_cache"] - mem["rollout_scores_transient"]
    fit = max(int((dev.budget_bytes - resident) / per_row), 0)
    return {"device": device, "mesh": dict(mesh), "mfu": mfu, "bw_util": bw_util,
            "hbm_bytes": dev.hbm_bytes, "budget_bytes": dev.budget_bytes, "seq_len": run.seq_len,
            "cache_len": run.cache_len,
            "rollout_rows_that_fit": min(fit, run.rows), "memory": mem,
            "time": time_plan(m, run, mesh, dev, mfu=mfu, bw_util=bw_util)}


def _gb(x: float) -> str:
    return f"{x / 1e9:8.2f} GB"


def format_plan(p: dict, title: str = "") -> str:
    mem, tm, hbm = p["memory"], p["time"], p["hbm_bytes"]
    mesh = ",".join(f"{k}:{v}" for k, v in p["mesh"].items())
    lines = [f"plan {title} on {int(mem['devices'])} x {DEVICES[p['device']].name} (mesh {mesh}); "
             f"ESTIMATES, not measurements",
             f"  params {mem['num_params'] / 1e9:.3f}B; train seq {p['seq_len']} tokens; "
             f"KV cache {p['cache_len']} slots x {int(mem['rollout_rows'])} rollout rows",
             "  per-device memory:"]
    for key, label in (("params", "params"), ("master_fp32", "fp32 master copy"),
                       ("adam_mv_fp32", "AdamW m+v fp32"), ("grads", "grads (accum + micro)"),
                       ("ref_params", "reference params"), ("ofsd_teacher", "OFSD teacher snapshot"),
                       ("activations_no_remat", "activations, no remat"),
                       ("activations_remat", "activations, remat"),
                       ("grpo_logits_chunk", "GRPO logits chunk"), ("ofsd_logits_chunk", "OFSD logits chunk"),
                       ("rollout_weights", "rollout weights replica"),
                       ("kv_cache", "KV cache, all rows"), ("rollout_scores_transient", "extend scores, all rows"),
                       ("peak_rollout", "PEAK rollout, all rows"), ("peak_train", "PEAK GRPO update"),
                       ("peak_ofsd", "PEAK OFSD update")):
        flag = "  > budget" if key.startswith("peak") and mem[key] > p["budget_bytes"] else ""
        lines.append(f"    {label:26s}{_gb(mem[key])}{flag}")
    lines.append(f"    {'device HBM':26s}{_gb(hbm)}")
    lines.append(f"    {'budget':26s}{_gb(p['budget_bytes'])}  ({HEADROOM:.0%} of the allocator's "
                 f"{MEM_FRACTION[DEVICES[p['device']].platform]:.0%} of HBM)")
    pick = p.get("rollout_chunk")
    if pick:
        used = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in pick["totals"].items())
        lines.append(f"  rollout chunk: config.rollout.max_rows = {pick['config']}; the planner picks "
                     f"{pick['max_rows']} ({used} GB with the train state, budget {pick['budget'] / 1e9:.1f} GB"
                     + ("" if pick["fits"] else ": DOES NOT FIT even so") + ")")
        if pick["fits"] and (pick["config"] == 0 or pick["config"] > pick["max_rows"]):
            lines.append(f"  WARNING: set --config.rollout.max_rows={pick['max_rows']}: the config's chunk does "
                         f"not fit the device (plan --aot compiles it to check)")
    if not pick and p["rollout_rows_that_fit"] < mem["rollout_rows"]:
        lines.append(f"  rollout: only ~{p['rollout_rows_that_fit']} of {int(mem['rollout_rows'])} rows fit "
                     f"one decode batch in the budget: roll out in chunks of rows (config.rollout.max_rows)")
    if mem["micro_batch_replicated"]:
        lines.append("  WARNING: config.grpo.micro_batch is not a multiple of data x fsdp: every device "
                     "computes the whole micro-batch (set it to a multiple)")
    lines += [f"  tokens/step: rollout {tm['rollout_tokens'] / 1e6:.2f}M (sampled "
              f"{tm['sampled_tokens'] / 1e6:.2f}M), train {tm['train_tokens'] / 1e6:.2f}M",
              f"  FLOPs/step: rollout {tm['rollout_flops']:.3g}, train {tm['train_flops']:.3g}",
              f"  time/step (mfu {p['mfu']}, bw_util {p['bw_util']}): rollout {tm['rollout_s']:.1f} s "
              f"({int(tm['decode_steps'])} decode steps x {tm['decode_step_s'] * 1e3:.1f} ms; compute "
              f"bound {tm['rollout_compute_s']:.1f} s) + train {tm['train_s']:.1f} s = {tm['step_s']:.1f} s"]
    return "\n".join(lines)


def main(argv):
    from absl import flags
    from ml_collections import config_flags
    f = flags.FLAGS
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}; use --config.KEY=VALUE overrides")
    mesh = parse_mesh(f.mesh)
    if f.aot:  # the fake CPU devices must be asked for before JAX starts its backends
        from searche1_jax.aot import ensure_devices
        ensure_devices(mesh["data"] * mesh["fsdp"] * mesh["tensor"])
    from searche1_jax.config import from_config_dict, model_overrides
    c, path = from_config_dict(f.config), config_flags.get_config_filename(f["config"])
    model = model_config_for(c, f.model)
    check_model_split(model, mesh, c.logical_axis_rules)  # a mesh that cuts a dimension: refused, not planned
    run = run_shape_from_config(c, prompt_tokens=f.prompt_tokens, fill=f.fill)
    title = f.model or c.model.preset or os.path.basename(path)
    if f.aot:
        from searche1_jax.aot import aot_report, format_aot, markdown_aot
        names = tuple(filter(None, f.programs.split(",")))
        rep = aot_report(c, model.replace(**model_overrides(c)), run, mesh, f.device, processes=f.processes,
                         privileged_tokens=f.privileged_tokens, names=names,
                         log=lambda line: print(line, file=sys.stderr, flush=True))
        command = " ".join(["python -m searche1_jax.plan"] + argv_flags())
        if f.json:  # scripts/aot_tables.py renders saved reports as markdown
            print(json.dumps({**rep, "model": dataclasses.asdict(rep["model"]), "title": title, "command": command},
                             indent=1))
        else:
            print(markdown_aot(rep, title, command) if f.markdown else format_aot(rep, title))
        return
    p = plan(model, run, mesh, f.device, mfu=f.mfu, bw_util=f.bw_util)
    from searche1_jax.program_plan import pick_rollout_rows
    p["rollout_chunk"] = dict(pick_rollout_rows(c, model.replace(**model_overrides(c)), run, mesh, f.device,
                                                f.processes), config=c.rollout.max_rows)
    if f.json:
        print(json.dumps(p, indent=1))
    elif f.markdown:
        print("\n".join([f"`{' '.join(['python -m searche1_jax.plan'] + argv_flags())}`", "", "```",
                         format_plan(p, title), "```"]))
    else:
        print(format_plan(p, title))


def argv_flags() -> list[str]:
    """This command's flags as typed (for a generated document to show the command)."""
    return [a for a in sys.argv[1:] if a.startswith("--") and a not in ("--markdown", "--json")]


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    from searche1_jax.program_plan import PROGRAMS

    config_flags.DEFINE_config_file("config", None, "experiment config file (ml_collections)")
    flags.DEFINE_string("mesh", "fsdp:8,tensor:1", "data/fsdp/tensor sizes, e.g. fsdp:8,tensor:1")
    flags.DEFINE_string("device", "h100", f"one of {sorted(DEVICES)}")
    flags.DEFINE_string("model", "", "model preset; default: config.model.preset, else config.model.architecture")
    flags.DEFINE_integer("prompt_tokens", 256, "assumed prompt length (instruction + question)")
    flags.DEFINE_float("fill", 1.0, "fraction of turn/observation budgets used (1 = worst case)")
    flags.DEFINE_float("mfu", 0.4, "assumed model FLOP utilisation of matmul-bound phases")
    flags.DEFINE_float("bw_util", 0.7, "assumed fraction of HBM bandwidth reached while decoding")
    flags.DEFINE_bool("json", False, "print the plan dict as JSON")
    flags.DEFINE_bool("markdown", False, "print the plan (or the --aot table) as markdown, with the command")
    flags.DEFINE_bool("aot", False, "compile the real programs at the config's shapes on as many fake CPU "
                      "devices as --mesh names, and print XLA's per-device bytes beside the estimate")
    flags.DEFINE_string("programs", ",".join(PROGRAMS), "--aot: the programs to compile, comma-separated")
    flags.DEFINE_integer("processes", 1, "processes the run has (v4-32: 4, v5e-64: 16): with several, each "
                         "rolls out its own rows on its own devices")
    flags.DEFINE_integer("privileged_tokens", 128, "--aot: context tokens the OFSD teacher's sequence adds")
    flags.mark_flag_as_required("config")
    app.run(main)
