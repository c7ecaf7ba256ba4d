"""The alternating loop (METHOD §2-§3): a GRPO round of N steps, then an OFSD round, repeated,
for a single run and for a sweep population alike (a single run is one member).

State machine kept in the checkpoint meta: {"round", "phase": "grpo"|"ofsd", "round_step",
"data"}. A killed run restarts from its last checkpoint: mid-GRPO it resumes at the next
step; an interrupted OFSD round is redone from its start (same rng, same questions).

Each GRPO step: one batch of questions (data.* is shared by every member); each member rolls
out with its own params, rng and sampling params; the packed batches, old / reference
log-probs and the PPO updates run as one call for all members. An OFSD round: each member's
teacher snapshot rolls out and selects its own pairs; a member with fewer mini-batches than
the others is inactive for the extra updates, so it sees exactly its own sequence of updates.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from searche1_jax.rl.grpo import check_unique_group_ids
from searche1_jax.train import distill
from searche1_jax.train.checkpoint import Checkpointer
from searche1_jax.train.metrics import MetricsWriter, Progress
from searche1_jax.train.rollouts import grpo_arrays, roll_out, rollout_metrics
from searche1_jax.train.setup import Experiment
from searche1_jax.train.state import TrainState

# a process without OFSD students still joins every update (with all-padding rows)
OFSD_DTYPES = {"tokens": np.int32, "valid": bool, "teacher_tokens": np.int32, "teacher_valid": bool,
               "student_idx": np.int32, "teacher_idx": np.int32, "kl_mask": np.int32}
GRPO_DTYPES = {"tokens": np.int32, "valid": bool, "loss_mask": np.int32, "advantages": np.float32}


def split_keys(rng: jax.Array, n: int) -> list[jax.Array]:
    """Member-wise jax.random.split(rng[i], n) -> n key arrays [N]."""
    parts = [jax.random.split(rng[i], n) for i in range(rng.shape[0])]
    return [jnp.stack([p[j] for p in parts]) for j in range(n)]


class Trainer:
    """names: one per member (population metrics rows carry `member` and `name`)."""

    def __init__(self, exp: Experiment, workdir: str, names: list[str] | None = None):
        self.exp, self.c = exp, exp.config
        self.layout = exp.layout
        self.names = names or [f"member{i}" for i in range(exp.n)]
        self.tag_members = names is not None or exp.n > 1  # sweep rows carry `member` and `name`
        self.ckpt = Checkpointer(f"{workdir}/checkpoints", keep=self.c.checkpoint.keep,
                                 async_save=self.c.checkpoint.async_save)
        self.metrics = MetricsWriter(workdir, tensorboard=self.c.log.tensorboard and not self.layout.population)
        self.metrics_path = self.metrics.path
        self.total_grpo = exp.total_grpo_steps
        self.progress = Progress(self.total_grpo)
        self.pad = {"tokens": exp.tokenizer.pad_id, "teacher_tokens": exp.tokenizer.pad_id}
        self._group_ids = [frozenset()] * exp.n  # per member: members share the questions

    def _write(self, step: int, phase: str, per_member: list[dict]) -> list[dict]:
        if not self.tag_members:
            return [self.metrics.write(step, phase, per_member[0])]
        return [self.metrics.write(step, phase, {"member": i, "name": self.names[i], **m})
                for i, m in enumerate(per_member)]

    def _roll_out(self, params, examples, group_size: int, keys):
        exp = self.exp
        return [roll_out(exp.agent, exp.policy(params, i), examples, group_size,
                         self.layout.key(keys[i]), exp.sampling[i]) for i in range(exp.n)]

    def _orders(self, key, rows: list[int]):
        """A fresh permutation of each member's rows, from its own key."""
        return [np.asarray(jax.random.permutation(key[i], n)) if n else np.zeros(0, int)
                for i, n in enumerate(rows)]

    # ---- one GRPO step: roll out, reward, advantages, PPO mini-batch updates ----
    def grpo_step(self, state: TrainState) -> TrainState:
        c, exp, lay = self.c, self.exp, self.layout
        t0 = time.time()
        # config batch sizes are global; each process takes its share (multihost.py)
        examples = exp.train_data.next_batch(lay.share(c.grpo.questions_per_step, "config.grpo.questions_per_step"))
        key, rkey = split_keys(state.rng, 2)
        groups = self._roll_out(state.params, examples, c.rollout.group_size, rkey)
        t_roll = time.time() - t0
        self.progress.note(f"[grpo] step {state.step + 1}: rolled out {len(groups[0])} groups in {t_roll:.0f}s, "
                           f"updating")
        traj_per_update = lay.share(c.grpo.mini_batch, "config.grpo.mini_batch")  # trajectories (Search-R1)
        rows = lay.share(c.grpo.micro_batch, "config.grpo.micro_batch")
        per = [grpo_arrays(g, step=state.step, length_bucket=c.grpo.length_bucket,
                           rows_multiple=np.lcm(traj_per_update, rows), pad_id=exp.tokenizer.pad_id)
               for g in groups]
        for i, b in enumerate(per):  # METHOD §2: a group id never repeats across steps
            ids = b.pop("group_ids")
            self._group_ids[i] = check_unique_group_ids(ids[ids >= 0], self._group_ids[i])
        batch = lay.combine(per, GRPO_DTYPES, self.pad)  # same shapes everywhere
        batch.pop("_rows", None)
        hyper = exp.hyper(state.step)
        batch["old_logps"] = lay.logps(exp.steps.logps, state.params, batch["tokens"], batch["valid"], hyper, rows)
        batch["ref_logps"] = lay.logps(exp.steps.logps, state.ref_params, batch["tokens"], batch["valid"],
                                       hyper, rows)
        params, opt_state = state.params, state.opt_state
        n_rows = lay.rows(batch)
        perm_key, step_metrics = key, []
        for _ in range(c.grpo.epochs):
            perm_key, sub = split_keys(perm_key, 2)
            orders = self._orders(sub, n_rows)
            for lo in range(0, max(n_rows), traj_per_update):
                mb = lay.take(batch, orders, lo, lo + traj_per_update, rows)
                params, opt_state, m = exp.steps.grpo(params, opt_state, mb, hyper)
                step_metrics.append(jax.device_get(m))
        dt = time.time() - t0
        rows_out = []
        for i in range(exp.n):
            summary = rollout_metrics(groups[i])
            for k in step_metrics[0]:
                summary[k] = float(np.mean([lay.metric(m, k, i) for m in step_metrics]))
            tokens = float(per[i]["valid"].sum())
            summary.update(tokens_per_s=tokens / dt, rollout_s=t_roll, step_s=dt, compiles=exp.compile_count(),
                           updates=float(len(step_metrics)),
                           lr=float(np.asarray(hyper["lr"]).reshape(-1)[i]))
            rows_out.append(summary)
        meta = dict(state.meta, round_step=state.meta["round_step"] + 1, data=exp.train_data.get_state())
        new = TrainState(params, opt_state, state.ref_params, state.step + 1, key, meta)
        written = self._write(new.step, "grpo", rows_out)
        rewards = [r["reward"] for r in written]
        if exp.n == 1:
            self.progress.update(new.step, "grpo", reward=rewards[0], tok_s=round(written[0]["tokens_per_s"]),
                                 searches=written[0]["searches"])
        else:
            self.progress.update(new.step, "grpo", reward_mean=float(np.mean(rewards)),
                                 reward_best=float(np.max(rewards)), step_s=round(dt, 1))
        return new

    # ---- one OFSD round: teacher snapshot, roll out, select, distil ----
    def ofsd_round(self, state: TrainState) -> TrainState:
        c, exp, lay = self.c, self.exp, self.layout
        key, rkey, pkey = split_keys(state.rng, 3)
        teacher_params = jax.tree.map(jnp.copy, state.params)  # frozen theta_k of every member
        examples = exp.train_data.next_batch(lay.share(c.ofsd.questions, "config.ofsd.questions"))
        groups = self._roll_out(teacher_params, examples, c.ofsd.group_size, rkey)
        pairs = [distill.select_pairs(g, include_equal=c.ofsd.include_equal) for g in groups]
        self.progress.note(f"[ofsd] round {state.meta['round']}: teacher rolled out {len(groups[0])} groups, "
                           f"{[len(p) for p in pairs]} students, distilling")
        mini = lay.share(c.ofsd.mini_batch, "config.ofsd.mini_batch")
        micro = lay.share(c.ofsd.micro_batch, "config.ofsd.micro_batch")
        per = [distill.ofsd_arrays(p, g, exp.tokenizer, rendering=c.ofsd.rendering,
                                   length_bucket=c.ofsd.length_bucket, rows_multiple=np.lcm(mini, micro))
               if p else None for p, g in zip(pairs, groups)]
        batch = lay.combine(per, OFSD_DTYPES, self.pad)  # None when no member (process) has a student
        params, opt_state = state.params, state.opt_state  # same optimiser (METHOD §3.6)
        # the lr of the GRPO step this round follows, or config.ofsd.lr (METHOD §3.6)
        hyper = exp.hyper(max(state.step - 1, 0), ofsd=True)
        losses = [[] for _ in range(exp.n)]
        if batch is not None:
            n_rows = lay.rows(batch)
            for _ in range(c.ofsd.epochs):
                pkey, sub = split_keys(pkey, 2)
                orders = self._orders(sub, n_rows)
                for lo in range(0, max(n_rows), mini):
                    active = np.asarray([lo < n for n in n_rows])
                    mb = lay.take(batch, orders, lo, lo + mini, micro)
                    teacher = params if c.ofsd.teacher == "live" else teacher_params
                    args = (lay.place(active),) if lay.population else ()
                    params, opt_state, m = exp.steps.ofsd(params, opt_state, teacher, mb, hyper, *args)
                    m = jax.device_get(m)
                    for i in np.flatnonzero(active):
                        losses[i].append(lay.metric(m, "ofsd_loss", i))
        rows_out = []
        for i in range(exp.n):
            rows_out.append({"ofsd_groups_used": float(len({p.group for p in pairs[i]})),
                             "ofsd_students": float(len(pairs[i])),
                             **{f"teacher_{k}": v for k, v in rollout_metrics(groups[i]).items()},
                             "ofsd_loss": float(np.mean(losses[i])) if losses[i] else float("nan"),
                             "ofsd_updates": float(len(losses[i]))})
        meta = dict(state.meta, phase="grpo", round=state.meta["round"] + 1, round_step=0,
                    data=exp.train_data.get_state())
        new = TrainState(params, opt_state, state.ref_params, state.step, key, meta)
        self._write(new.step, "ofsd", rows_out)
        print(f"[ofsd] round {state.meta['round']}: students {[len(p) for p in pairs]}, loss "
              f"{[round(r['ofsd_loss'], 4) for r in rows_out]}", flush=True)
        return new

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
                state.meta = (dict(state.meta, phase="ofsd") if c.ofsd.enabled else
                              dict(state.meta, round=state.meta["round"] + 1, round_step=0))
                self.ckpt.save(state, force=True)
            else:
                state = self.ofsd_round(state)
                self.ckpt.save(state, force=True)
        self.ckpt.close()
        return state
