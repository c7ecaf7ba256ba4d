"""The alternating loop of `train/loop.py` for a whole population at once.

Each GRPO step: one batch of questions for everyone (data.* is structural); each member rolls
out with its own params, rng and sampling params (a host loop over members: the sampler has
one set of weights per call, so members cannot share a decode call; the retriever is called
by each member's agent); the packed batches are padded to a common length and stacked, and
the old/ref log-probs and the PPO updates run as one vmapped call over the member axis.

OFSD round: every member rolls out with its own teacher snapshot and selects its own pairs;
arrays are padded to common shapes; a member with fewer mini-batches than the others is
inactive (`active=False`: params and optimiser state untouched) for the extra updates, so
each member sees exactly its single-run sequence of updates.

Checkpoint: one orbax checkpoint of the stacked state (params / opt state / ref [N, ...],
rng [N]) and the shared meta; a re-run resumes it. Metrics: one JSONL row per member per
step with a `member` field.
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from searche1_jax.rl.rewards import exact_match
from searche1_jax.rollout.sampler import SamplingParams
from searche1_jax.sweep.setup import PopulationSetup
from searche1_jax.train import distill
from searche1_jax.train.batching import to_micro
from searche1_jax.train.checkpoint import Checkpointer
from searche1_jax.train.metrics import Progress, _scalar
from searche1_jax.train.rollouts import grpo_arrays, roll_out, rollout_metrics
from searche1_jax.train.state import TrainState


def pad_stack(batches: list[dict[str, np.ndarray]], pad_ids: dict[str, int]) -> dict[str, np.ndarray]:
    """Per-member dicts of [B_i, L_i, ...] arrays -> [N, max B, max L, ...] (zero / pad-id filled)."""
    out = {}
    for k in batches[0]:
        shape = tuple(max(b[k].shape[d] for b in batches) for d in range(batches[0][k].ndim))
        arr = np.full((len(batches),) + shape, pad_ids.get(k, 0), batches[0][k].dtype)
        for i, b in enumerate(batches):
            arr[(i,) + tuple(slice(0, s) for s in b[k].shape)] = b[k]
        out[k] = arr
    return out


class PopulationTrainer:
    def __init__(self, setup: PopulationSetup, workdir: str, names: list[str]):
        self.s, self.c = setup, setup.config
        self.workdir, self.names = workdir, names
        self.ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=self.c.checkpoint.keep,
                                 async_save=self.c.checkpoint.async_save)
        self.metrics_path = os.path.join(workdir, "metrics.jsonl")
        self.total_grpo = self.c.train.rounds * self.c.grpo.steps_per_round
        self.pad = {"tokens": setup.tokenizer.pad_id, "teacher_tokens": setup.tokenizer.pad_id}

    def _write(self, step: int, phase: str, per_member: list[dict]) -> None:
        now = time.time()
        with open(self.metrics_path, "a") as f:
            for i, m in enumerate(per_member):
                row = {"member": i, "name": self.names[i], "step": int(step), "phase": phase, "time": now,
                       **{k: _scalar(v) for k, v in m.items()}}
                f.write(json.dumps(row) + "\n")

    def _split(self, rng, n: int) -> list[jax.Array]:
        """Member-wise jax.random.split(rng[i], n) -> n stacked key arrays [N]."""
        parts = [jax.random.split(rng[i], n) for i in range(self.s.n)]
        return [jnp.stack([p[j] for p in parts]) for j in range(n)]

    def grpo_step(self, state: TrainState) -> TrainState:
        c, s = self.c, self.s
        t0 = time.time()
        examples = s.train_data.next_batch(c.grpo.questions_per_step)
        key, rkey = self._split(state.rng, 2)
        groups = [roll_out(s.agent, s.binder.bind(s.member_params(state.params, i)), examples,
                           c.rollout.group_size, rkey[i], s.sampling[i]) for i in range(s.n)]
        t_roll = time.time() - t0
        traj_per_update = c.grpo.mini_batch * c.rollout.group_size
        per = [grpo_arrays(g, step=state.step, length_bucket=c.grpo.length_bucket,
                           rows_multiple=np.lcm(traj_per_update, c.grpo.micro_batch),
                           pad_id=s.tokenizer.pad_id) for g in groups]
        batch = pad_stack(per, self.pad)  # same rows for every member; lengths padded
        rows = c.grpo.micro_batch
        batch["old_logps"] = s.logps(state.params, batch["tokens"], batch["valid"], rows)
        batch["ref_logps"] = s.logps(state.ref_params, batch["tokens"], batch["valid"], rows)
        params, opt_state = state.params, state.opt_state
        n_rows = batch["tokens"].shape[1]
        perm_key, step_metrics = key, []
        for _ in range(c.grpo.epochs):
            perm_key, sub = self._split(perm_key, 2)
            orders = [np.asarray(jax.random.permutation(sub[i], n_rows)) for i in range(s.n)]
            for lo in range(0, n_rows, traj_per_update):
                mb = {k: np.stack([to_micro({k: v[i][orders[i][lo:lo + traj_per_update]]}, rows)[k]
                                   for i in range(s.n)]) for k, v in batch.items()}
                params, opt_state, m = s.steps.grpo(params, opt_state, s.steps.shard(mb), s.hyper)
                step_metrics.append(jax.device_get(m))
        dt = time.time() - t0
        rows_out = []
        for i in range(s.n):
            summary = rollout_metrics(groups[i])
            for k in step_metrics[0]:
                summary[k] = float(np.mean([m[k][i] for m in step_metrics]))
            summary.update(tokens=float(per[i]["valid"].sum()), rollout_s=t_roll, step_s=dt,
                           compiles=s.steps.compile_count())
            rows_out.append(summary)
        meta = dict(state.meta, round_step=state.meta["round_step"] + 1, data=s.train_data.get_state())
        new = TrainState(params, opt_state, state.ref_params, state.step + 1, key, meta)
        self._write(new.step, "grpo", rows_out)
        rewards = [r["reward"] for r in rows_out]
        self.progress.update(new.step, "grpo", reward_mean=float(np.mean(rewards)),
                             reward_best=float(np.max(rewards)), step_s=round(dt, 1))
        return new

    def ofsd_round(self, state: TrainState) -> TrainState:
        c, s = self.c, self.s
        key, rkey, pkey = self._split(state.rng, 3)
        teacher = jax.tree.map(jnp.copy, state.params)  # frozen theta_k of every member
        examples = s.train_data.next_batch(c.ofsd.questions)
        groups = [roll_out(s.agent, s.binder.bind(s.member_params(teacher, i)), examples, c.ofsd.group_size,
                           rkey[i], s.sampling[i]) for i in range(s.n)]
        pairs = [distill.select_pairs(g, include_equal=c.ofsd.include_equal) for g in groups]
        per = [distill.ofsd_arrays(p, g, s.tokenizer, rendering=c.ofsd.rendering,
                                   length_bucket=c.ofsd.length_bucket,
                                   rows_multiple=np.lcm(c.ofsd.mini_batch, c.ofsd.micro_batch))
               if p else None for p, g in zip(pairs, groups)]
        params, opt_state = state.params, state.opt_state  # same optimiser (METHOD §3.6)
        losses = [[] for _ in range(s.n)]
        present = [b for b in per if b is not None]
        if present:
            like = {k: np.zeros_like(v[:0]) for k, v in present[0].items()}  # 0 rows: member with no pairs
            batch = pad_stack([b if b is not None else like for b in per], self.pad)
            n_rows = [b["tokens"].shape[0] if b is not None else 0 for b in per]
            mbs = c.ofsd.mini_batch
            for _ in range(c.ofsd.epochs):
                pkey, sub = self._split(pkey, 2)
                orders = [np.asarray(jax.random.permutation(sub[i], n)) if n else np.zeros(0, int)
                          for i, n in enumerate(n_rows)]
                for lo in range(0, max(n_rows), mbs):
                    active = np.asarray([lo < n for n in n_rows])
                    idx = [o[lo:lo + mbs] if lo < len(o) else np.arange(mbs) for o in orders]
                    mb = {k: np.stack([to_micro({k: v[i][idx[i]]}, c.ofsd.micro_batch)[k] for i in range(s.n)])
                          for k, v in batch.items()}
                    live = params if c.ofsd.teacher == "live" else teacher
                    params, opt_state, m = s.steps.ofsd(params, opt_state, live, s.steps.shard(mb), s.hyper,
                                                        s.steps.shard(active))
                    loss = np.asarray(m["ofsd_loss"])
                    for i in np.flatnonzero(active):
                        losses[i].append(float(loss[i]))
        rows_out = []
        for i in range(s.n):
            summary = {"ofsd_groups_used": float(len({p.group for p in pairs[i]})),
                       "ofsd_students": float(len(pairs[i])),
                       **{f"teacher_{k}": v for k, v in rollout_metrics(groups[i]).items()},
                       "ofsd_loss": float(np.mean(losses[i])) if losses[i] else float("nan"),
                       "ofsd_updates": float(len(losses[i]))}
            rows_out.append(summary)
        meta = dict(state.meta, phase="grpo", round=state.meta["round"] + 1, round_step=0,
                    data=s.train_data.get_state())
        new = TrainState(params, opt_state, state.ref_params, state.step, key, meta)
        self._write(new.step, "ofsd", rows_out)
        print(f"[ofsd] round {state.meta['round']}: students per member {[len(p) for p in pairs]}", flush=True)
        return new

    def run(self) -> TrainState:
        c, s = self.c, self.s
        state = self.ckpt.restore_latest(s.initial_state()) if self.ckpt.latest_step() is not None else None
        if state is None:
            state = s.initial_state()
        else:
            s.train_data.set_state(state.meta["data"])
            print(f"resumed from step {state.step} (round {state.meta['round']}, {state.meta['phase']})",
                  flush=True)
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

    def dev_em(self, state: TrainState, limit: int) -> list[float | None]:
        """Greedy EM of each member on the first `limit` dev questions (None without a dev file)."""
        if not self.c.data.dev or limit <= 0:
            return [None] * self.s.n
        from searche1_jax.data.qa import read_examples
        examples = read_examples(self.c.data.dev)[:limit]
        greedy = SamplingParams(greedy=True)
        out = []
        for i in range(self.s.n):
            trajs = self.s.agent.run(self.s.binder.bind(self.s.member_params(state.params, i)),
                                     [ex.question for ex in examples], jax.random.key(0), greedy)
            out.append(float(np.mean([exact_match(t.answer, ex.golden_answers) if t.answer is not None else 0.0
                                      for t, ex in zip(trajs, examples)])))
        return out
