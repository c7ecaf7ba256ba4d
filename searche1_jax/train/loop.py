"""The alternating loop (METHOD §2-§3): a GRPO round of N steps, then an OFSD round, repeated.

State machine kept in the checkpoint meta: {"round", "phase": "grpo"|"ofsd", "round_step",
"data"}. A killed run restarts from its last checkpoint: mid-GRPO it resumes at the next
step; an interrupted OFSD round is redone from its start (same rng, same questions).
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from searche1_jax.rollout.sampler import SamplingParams
from searche1_jax.train import distill
from searche1_jax.train.batching import to_micro
from searche1_jax.train.checkpoint import Checkpointer
from searche1_jax.train.metrics import MetricsWriter, Progress
from searche1_jax.train.multihost import (agree_shapes, is_multi_process, per_process, rollout_replica,
                                          to_global, to_local)
from searche1_jax.train.rollouts import grpo_arrays, roll_out, rollout_metrics
from searche1_jax.train.setup import Experiment
from searche1_jax.train.state import TrainState


# a process without OFSD students still joins every update (with all-padding rows)
OFSD_DTYPES = {"tokens": np.int32, "valid": bool, "teacher_tokens": np.int32, "teacher_valid": bool,
               "student_idx": np.int32, "teacher_idx": np.int32, "kl_mask": np.int32}


def _logps_in_chunks(fn, params, tokens, valid, rows: int, mesh=None):
    """Log-probs of this process's rows, `rows` at a time (global batches across processes)."""
    out = []
    for i in range(0, tokens.shape[0], rows):
        g = to_global({"tokens": tokens[i:i + rows], "valid": valid[i:i + rows]}, mesh)
        out.append(to_local(fn(params, g["tokens"], g["valid"]), mesh))
    return np.concatenate(out, axis=0)


def _process_key(key):
    """Each process samples its own questions with its own noise."""
    return jax.random.fold_in(key, jax.process_index()) if is_multi_process() else key


class Trainer:
    def __init__(self, exp: Experiment, workdir: str):
        self.exp, self.c = exp, exp.config
        self.ckpt = Checkpointer(f"{workdir}/checkpoints", keep=self.c.checkpoint.keep,
                                 async_save=self.c.checkpoint.async_save)
        self.metrics = MetricsWriter(workdir, tensorboard=self.c.log.tensorboard)
        r = self.c.rollout
        self.sampling = SamplingParams(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k)
        self.total_grpo = self.c.train.rounds * self.c.grpo.steps_per_round
        self.progress = Progress(self.total_grpo)

    # ---- one GRPO step: roll out, reward, advantages, PPO mini-batch updates ----
    def grpo_step(self, state: TrainState) -> TrainState:
        c, exp = self.c, self.exp
        t0 = time.time()
        # config batch sizes are global; each process takes its share (multihost.py)
        examples = exp.train_data.next_batch(per_process(c.grpo.questions_per_step,
                                                         "config.grpo.questions_per_step"))
        key, rkey = jax.random.split(state.rng)
        groups = roll_out(exp.agent, self.policy(state.params), examples, c.rollout.group_size,
                          _process_key(rkey), self.sampling)
        t_roll = time.time() - t0
        self.progress.note(f"[grpo] step {state.step + 1}: rolled out {len(groups)} groups in {t_roll:.0f}s, "
                           f"updating")
        traj_per_update = per_process(c.grpo.mini_batch, "config.grpo.mini_batch") * c.rollout.group_size
        rows = per_process(c.grpo.micro_batch, "config.grpo.micro_batch")
        batch = grpo_arrays(groups, step=state.step, length_bucket=c.grpo.length_bucket,
                            rows_multiple=np.lcm(traj_per_update, rows), pad_id=exp.tokenizer.pad_id)
        batch = agree_shapes(batch, {k: v.dtype for k, v in batch.items()})  # same length everywhere
        batch["old_logps"] = _logps_in_chunks(exp.logps_fn, state.params, batch["tokens"], batch["valid"],
                                              rows, exp.mesh)
        batch["ref_logps"] = _logps_in_chunks(exp.logps_fn, state.ref_params, batch["tokens"], batch["valid"],
                                              rows, exp.mesh)
        params, opt_state = state.params, state.opt_state
        n_rows = batch["tokens"].shape[0]
        perm_key = key
        step_metrics = []
        for _ in range(c.grpo.epochs):
            perm_key, sub = jax.random.split(perm_key)
            order = np.asarray(jax.random.permutation(sub, n_rows))
            for lo in range(0, n_rows, traj_per_update):
                idx = order[lo:lo + traj_per_update]
                mb = to_global(to_micro({k: v[idx] for k, v in batch.items()}, rows), exp.mesh, row_axis=1)
                params, opt_state, m = exp.grpo_step(params, opt_state, mb)
                step_metrics.append(jax.device_get(m))
        dt = time.time() - t0
        tokens = float(batch["valid"].sum())
        summary = rollout_metrics(groups)
        for k in step_metrics[0]:
            summary[k] = float(np.mean([m[k] for m in step_metrics]))
        summary.update(tokens_per_s=tokens / dt, rollout_s=t_roll, step_s=dt,
                       compiles=exp.compile_count())
        meta = dict(state.meta, round_step=state.meta["round_step"] + 1,
                    data=exp.train_data.get_state())
        new = TrainState(params, opt_state, state.ref_params, state.step + 1, key, meta)
        row = self.metrics.write(new.step, "grpo", summary)
        self.progress.update(new.step, "grpo", reward=row["reward"], tok_s=round(row["tokens_per_s"]),
                             searches=row["searches"])
        return new

    # ---- one OFSD round: teacher snapshot, roll out, select, distil ----
    def ofsd_round(self, state: TrainState) -> TrainState:
        c, exp = self.c, self.exp
        key, rkey, pkey = jax.random.split(state.rng, 3)
        teacher_params = jax.tree.map(jnp.copy, state.params)  # frozen theta_k
        examples = exp.train_data.next_batch(per_process(c.ofsd.questions, "config.ofsd.questions"))
        groups = roll_out(exp.agent, self.policy(teacher_params), examples, c.ofsd.group_size,
                          _process_key(rkey), self.sampling)
        pairs = distill.select_pairs(groups, include_equal=c.ofsd.include_equal)
        self.progress.note(f"[ofsd] round {state.meta['round']}: teacher rolled out {len(groups)} groups, "
                           f"{len(pairs)} students, distilling")
        summary = {"ofsd_groups_used": float(len({p.group for p in pairs})),
                   "ofsd_students": float(len(pairs)), **{f"teacher_{k}": v for k, v in rollout_metrics(groups).items()}}
        params, opt_state = state.params, state.opt_state  # same optimiser (METHOD §3.6)
        losses = []
        mini = per_process(c.ofsd.mini_batch, "config.ofsd.mini_batch")
        micro = per_process(c.ofsd.micro_batch, "config.ofsd.micro_batch")
        batch = distill.ofsd_arrays(pairs, groups, exp.tokenizer, rendering=c.ofsd.rendering,
                                    length_bucket=c.ofsd.length_bucket,
                                    rows_multiple=np.lcm(mini, micro)) if pairs else None
        batch = agree_shapes(batch, OFSD_DTYPES)  # None when no process has a student
        if batch is not None:
            n_rows = batch["tokens"].shape[0]
            for _ in range(c.ofsd.epochs):
                pkey, sub = jax.random.split(pkey)
                order = np.asarray(jax.random.permutation(sub, n_rows))
                for lo in range(0, n_rows, mini):
                    idx = order[lo:lo + mini]
                    mb = to_global(to_micro({k: v[idx] for k, v in batch.items()}, micro), exp.mesh, row_axis=1)
                    teacher = params if c.ofsd.teacher == "live" else teacher_params
                    params, opt_state, m = exp.ofsd_step(params, opt_state, teacher, mb)
                    losses.append(float(m["ofsd_loss"]))
        summary["ofsd_loss"] = float(np.mean(losses)) if losses else float("nan")
        summary["ofsd_updates"] = float(len(losses))
        meta = dict(state.meta, phase="grpo", round=state.meta["round"] + 1, round_step=0,
                    data=exp.train_data.get_state())
        new = TrainState(params, opt_state, state.ref_params, state.step, key, meta)
        self.metrics.write(new.step, "ofsd", summary)
        print(f"[ofsd] round {state.meta['round']}: {len(pairs)} students from "
              f"{int(summary['ofsd_groups_used'])} groups, loss {summary['ofsd_loss']:.4g}", flush=True)
        return new

    def policy(self, params):
        """The model the rollouts sample from: the params bound in place, or (several processes)
        a process-local replica, since each process rolls out its own questions."""
        replica = rollout_replica(params, self.exp.model_cfg)
        return replica if replica is not None else self.exp.binder.bind(params)

    def run(self) -> TrainState:
        c, exp = self.c, self.exp
        state = self.ckpt.restore_latest(exp.initial_state()) if self.ckpt.latest_step() is not None else None
        if state is None:
            state = exp.initial_state()
        else:
            # orbax writes the JSON meta from process 0; every process is at the same position
            exp.train_data.set_state(dict(state.meta["data"], process_index=jax.process_index()))
            print(f"resumed from step {state.step} (round {state.meta['round']}, {state.meta['phase']})", flush=True)
        self.progress = Progress(self.total_grpo)
        while state.meta["round"] < c.train.rounds:
            if state.meta["phase"] == "grpo":
                while state.meta["round_step"] < c.grpo.steps_per_round:
                    state = self.grpo_step(state)
                    if state.step % c.checkpoint.every_steps == 0:
                        self.ckpt.save(state)
                if c.ofsd.enabled:
                    state.meta = dict(state.meta, phase="ofsd")
                else:
                    state.meta = dict(state.meta, round=state.meta["round"] + 1, round_step=0)
                self.ckpt.save(state, force=True)
            else:
                state = self.ofsd_round(state)
                self.ckpt.save(state, force=True)
        self.ckpt.close()
        return state
