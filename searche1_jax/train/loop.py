"""The alternating loop (METHOD §2-§3): a GRPO round of N steps, then an OFSD round, repeated,
for a single run and for a sweep population alike (a single run is one member); optionally
preceded by a supervised warm start (config.sft, `warm_start.py`).

State machine kept in the checkpoint meta: {"round", "phase": "sft"|"grpo"|"ofsd",
"round_step", "sft_step", "data"}. A killed run restarts from its last checkpoint: mid-warm-start
or mid-GRPO it resumes at the next step; an interrupted OFSD round is redone from its start
(same rng, same questions). The warm start ends by making its result the reference policy and
starting a fresh optimiser state for RL. With config.sft.eval_dev, greedy dev EM (with a
bootstrap 95% interval) is logged as phase "eval" rows: "base" before anything trains,
"warm_start" after the warm start, "final" at the end (when any RL round ran); each row also
holds EM on the questions whose answer is not yes/no (`dev_summary`).

Each GRPO step: one batch of questions (data.* is shared by every member); each member rolls
out with its own params, rng and sampling params; the packed batches, old / reference
log-probs and the PPO updates run as one call for all members. An OFSD round: each member's
teacher snapshot rolls out and selects its own pairs; a member with fewer mini-batches than
the others is inactive for the extra updates, so it sees exactly its own sequence of updates.

Rollouts are host-driven and run on each process alone; each one ends in an agreement
(`multihost.failures_agreed`): a process whose retriever failed does not leave the others
waiting in the next collective, every process raises the same ProcessFailed naming it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from searche1_jax.data.loader import epoch_order
from searche1_jax.hostmem import memory_metrics, release
from searche1_jax.programs import set_lean
from searche1_jax.retrieval.client import RetrieverError
from searche1_jax.rollout.engine import free_compiled
from searche1_jax.rl.grpo import check_unique_group_ids, has_spread
from searche1_jax.shapes import policy_token_bound
from searche1_jax.train import distill, warm_start
from searche1_jax.train.batching import pack_trajectories
from searche1_jax.train.checkpoint import Checkpointer
from searche1_jax.train.metrics import MetricsWriter, Progress
from searche1_jax.train.multihost import failures_agreed
from searche1_jax.train.paths import atomic_write_text, workdir_path
from searche1_jax.train.preemption import Preempted, Preemption
from searche1_jax.train.reference import SAVED, ParkedOptimizer, ParkedReference
from searche1_jax.train.rollouts import advantages, greedy_em, grpo_arrays, roll_out, rollout_metrics
from searche1_jax.train.setup import Experiment
from searche1_jax.train.state import TrainState
from searche1_jax.train.trajectory_log import TrajectoryLog

# a process without OFSD students still joins every update (with all-padding rows)
OFSD_DTYPES = {"tokens": np.int32, "valid": bool, "teacher_tokens": np.int32, "teacher_valid": bool,
               "student_idx": np.int32, "teacher_idx": np.int32, "kl_mask": np.int32}
GRPO_DTYPES = {"tokens": np.int32, "valid": bool, "loss_mask": np.int32, "advantages": np.float32}
SFT_DTYPES = {"tokens": np.int32, "valid": bool, "loss_mask": np.int32}


def is_yes_no(golds) -> bool:
    """A comparison question whose gold answers are all "yes" / "no" (after EM normalisation):
    about half the multi-hop set, where always answering "no" scores ~25%."""
    from searche1_jax.rl.rewards import normalize_answer
    return len(golds) > 0 and all(normalize_answer(g) in ("yes", "no") for g in golds)


def dev_summary(em, golds, trajs) -> dict[str, float]:
    """Dev EM with its bootstrap 95% interval, overall and on the questions whose answer is not
    yes/no ("open"), and what the policy did: answered, searches and sampled tokens per question."""
    from searche1_jax.stats import bootstrap_ci
    em = np.asarray(em, np.float64)
    open_q = np.asarray([not is_yes_no(g) for g in golds], bool)
    lo, hi = bootstrap_ci(em)
    olo, ohi = bootstrap_ci(em[open_q])
    return {"dev_em": float(em.mean()) if len(em) else float("nan"), "dev_em_lo": lo, "dev_em_hi": hi,
            "dev_n": float(len(em)),
            "dev_em_open": float(em[open_q].mean()) if open_q.any() else float("nan"),
            "dev_em_open_lo": olo, "dev_em_open_hi": ohi, "dev_n_open": float(open_q.sum()),
            "dev_answered": float(np.mean([t.answer is not None for t in trajs])),
            "dev_searches": float(np.mean([t.num_searches for t in trajs])),
            "dev_sampled_tokens": float(np.mean([t.num_sampled for t in trajs]))}


def write_dev_answers(path: str, examples, em, trajs) -> None:
    """One JSON row per dev question (id, golds, the policy's answer, EM, searches, sampled tokens):
    what the summary row averages, so two evals of the same questions can be compared pairwise
    (benchmarks/learning.py) and a researcher can read the answers. Written atomically."""
    path = workdir_path(path)  # a gs:// workdir stays a URI (paths.py)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(
        json.dumps({"id": ex.id, "golden_answers": list(ex.golden_answers), "answer": t.answer,
                    "em": float(e), "searches": t.num_searches, "sampled_tokens": t.num_sampled,
                    "finish_reason": t.finish_reason}) + "\n"
        for ex, e, t in zip(examples, em, trajs, strict=True)))


def rollout_failure(r):
    """The text a failed rollout sends every process (`multihost.failures_agreed`): the error, and
    for a retriever's failure, which retriever (config.retrieval `r`) and what to do about it."""
    def describe(e: Exception) -> str:
        text = f"{type(e).__name__}: {e}"
        if not isinstance(e, RetrieverError):
            return text
        where = f"url {r.url}" if r.kind == "http" else f"index {r.index or r.corpus}"
        return (f"{text} [retriever: config.retrieval.kind={r.kind!r}, {where}]; if the server is slow, raise "
                f"config.retrieval.timeout ({r.timeout:g} s) and config.retrieval.deadline ({r.deadline:g} s); "
                f"else check the server and its log")
    return describe


def engine_metrics(agent) -> dict[str, float]:
    """The rollout engine's counters since the agent's last `take_stats` (`EngineStats.metrics`),
    prefixed `rollout_`, for a metrics row; the agent starts counting afresh."""
    return {f"rollout_{k}": v for k, v in agent.take_stats().metrics().items()}


def needs_teacher_copy(teacher: str, epochs: int, rows: int, mini_batch: int) -> bool:
    """Whether an OFSD round must hold a frozen copy of theta_k for its teacher: only a "snapshot"
    teacher over more than one update (epochs x ceil(rows / mini_batch)). With one update theta_k
    is the params that update reads; a "live" teacher is the params of each update."""
    return teacher == "snapshot" and epochs * -(-rows // mini_batch) > 1


def split_keys(rng: jax.Array, n: int) -> list[jax.Array]:
    """Member-wise jax.random.split(rng[i], n) -> n key arrays [N]."""
    parts = [jax.random.split(rng[i], n) for i in range(rng.shape[0])]
    return [jnp.stack([p[j] for p in parts]) for j in range(n)]


class Trainer:
    """names: one per member (population metrics rows carry `member` and `name`)."""

    def __init__(self, exp: Experiment, workdir: str, names: list[str] | None = None):
        self.exp, self.c = exp, exp.config
        set_lean(self.c.train.free_programs)  # executables only, no jit caches beside them (programs.py)
        self.layout = exp.layout
        self.names = names or [f"member{i}" for i in range(exp.n)]
        self.tag_members = names is not None or exp.n > 1  # sweep rows carry `member` and `name`
        self.ckpt = Checkpointer(f"{workdir}/checkpoints", keep=self.c.checkpoint.keep,
                                 async_save=self.c.checkpoint.async_save,
                                 concurrent_gb=self.c.checkpoint.concurrent_gb,
                                 meta_hook=lambda: {"metrics_rows": self.metrics.rows})  # metrics.py: resume
        self.preemption = Preemption()
        self.metrics = MetricsWriter(workdir, tensorboard=self.c.log.tensorboard and not self.layout.population)
        self.metrics_path = self.metrics.path
        self.workdir = workdir
        self.total_grpo = exp.total_grpo_steps
        self.progress = Progress(self.total_grpo)
        self.pad = {"tokens": exp.tokenizer.pad_id, "teacher_tokens": exp.tokenizer.pad_id}
        # config.train.head_on_loss_tokens: the LM head at the positions that predict the policy's
        # tokens, at least as many as a trajectory can have (then K depends on T alone: no extra
        # programs); None: at every position
        r = self.c.rollout
        self.head_floor = (policy_token_bound(r.max_turns, r.max_turn_tokens, r.max_response_tokens)
                           if self.c.train.head_on_loss_tokens else None)
        head = {"head_idx": np.int32} if self.head_floor is not None else {}
        self.grpo_dtypes, self.sft_dtypes = dict(GRPO_DTYPES, **head), dict(SFT_DTYPES, **head)
        self._group_ids = [frozenset()] * exp.n  # per member: members share the questions
        # HTML pages of member 0's trajectories (WORKDIR/trajectories/), written by process 0
        self.pages = (TrajectoryLog.from_experiment(exp, workdir)
                      if self.c.log.trajectory_groups and jax.process_index() == 0 else None)

    def _write(self, step: int, phase: str, per_member: list[dict]) -> list[dict]:
        """Record a step's (eval's, round's) metrics; every step ends here, so the heap's free
        pages go back to the system here too (hostmem.release), and each row carries the host's
        resident memory after it and the run's peak so far (`host_rss_gb`, `host_peak_rss_gb`)."""
        release()
        memory = memory_metrics()
        per_member = [{**m, **memory} for m in per_member]
        if not self.tag_members:
            return [self.metrics.write(step, phase, per_member[0])]
        return [self.metrics.write(step, phase, {"member": i, "name": self.names[i], **m})
                for i, m in enumerate(per_member)]

    def _free_programs(self, *steps: str, rollouts: bool = False, pages: bool = False,
                       everything: bool = False) -> None:
        """config.train.free_programs: drop the compiled programs a phase that just ended used
        (`Steps.free(*steps)`; with rollouts, every decode / append / prefill bucket; with pages,
        the trajectory pages' KL; with everything, every program of the process, the small
        op-by-op ones its host code compiled included: `jax.clear_caches`) and give their memory
        back to the system."""
        if not self.c.train.free_programs:
            return
        self.exp.steps.free(*steps)
        if rollouts:
            free_compiled()
        if everything or rollouts:  # rollouts: also the small op-by-op programs their host code compiled
            jax.clear_caches()
        if pages and self.pages:
            self.pages.free()
        release()

    def _save(self, state: TrainState, *, force: bool = False) -> bool:
        """Checkpoint `state`. A fresh optimiser state (None) is written as AdamW's initial state,
        made for the save and dropped after it, so every checkpoint has the one layout."""
        if state.opt_state is None or isinstance(state.opt_state, ParkedOptimizer):
            state = dataclasses.replace(state, opt_state=self._optimizer(state))
        return self.ckpt.save(state, force=force)

    def _optimizer(self, state: TrainState):
        """state's optimiser state; None (fresh: a run's start, RL after the warm start) becomes
        AdamW's initial state here, at the first update, not while evals and rollouts run."""
        if isinstance(state.opt_state, ParkedOptimizer):  # read back from its scratch directory
            return state.opt_state.load()
        if state.opt_state is not None:
            return state.opt_state
        return self.exp.steps.init(state.params, self.exp.hyper(0))

    def _park_optimizer(self, opt_state):
        """opt_state, written to WORKDIR/offload/optimizer and replaced by its handle when
        config.train.optimizer_resident is off (rollouts and evals then run without it)."""
        if self.c.train.optimizer_resident or opt_state is None or isinstance(opt_state, ParkedOptimizer):
            return opt_state
        return ParkedOptimizer.park(f"{self.workdir}/offload/optimizer", opt_state, self.c.checkpoint.concurrent_gb)

    def _reference(self, params):
        """The GRPO reference made from `params`: a copy, or with config.train.reference_resident
        off, `params` written to the reference directory and described (no copy held)."""
        if self.c.train.reference_resident:
            return jax.tree.map(jnp.copy, params)
        return self.ckpt.park_reference(params)

    def _parked(self, state: TrainState) -> TrainState:
        """state with its reference parked when config.train.reference_resident is off."""
        ref = state.ref_params
        if self.c.train.reference_resident or ref is None or isinstance(ref, ParkedReference):
            return state
        return dataclasses.replace(state, ref_params=self.ckpt.park_reference(ref),
                                   meta=dict(state.meta, reference=SAVED))

    def _roll_out(self, params, examples, group_size: int, keys):
        """Each member's groups; its rollout engine's counters (`EngineStats.metrics`, prefixed
        `rollout_`) go to self.engine_metrics[i] for the step's metrics row."""
        exp = self.exp
        groups, self.engine_metrics = [], []
        for i in range(exp.n):
            exp.agent.take_stats()
            policy = exp.policy(params, i)  # a collective with several processes: outside the agreement
            with failures_agreed("rollouts", rollout_failure(self.c.retrieval)):
                groups.append(roll_out(exp.agent, policy, examples, group_size, self.layout.key(keys[i]),
                                       exp.sampling[i], self.c.rollout.max_rows))
            self.engine_metrics.append(engine_metrics(exp.agent))
        self._free_programs(rollouts=True)  # the update that follows is the step's peak: without them
        return groups

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
        if self.pages:
            self.pages.grpo_step(groups[0], advantages(groups[0], state.step)[1], state.step + 1)
        trained = [[g for g, s in zip(gs, has_spread([g.rewards for g in gs])) if s] if c.grpo.skip_flat_groups
                   else gs for gs in groups]
        per = [grpo_arrays(g, step=state.step, length_bucket=c.grpo.length_bucket,
                           rows_multiple=np.lcm(traj_per_update, rows), pad_id=exp.tokenizer.pad_id,
                           head_at_least=self.head_floor) if g else None
               for g in trained]
        for i, b in enumerate(per):  # METHOD §2: a group id never repeats across steps
            if b is not None:
                ids = b.pop("group_ids")
                self._group_ids[i] = check_unique_group_ids(ids[ids >= 0], self._group_ids[i])
        batch = lay.combine(per, self.grpo_dtypes, self.pad)  # same shapes everywhere; None: no process has rows
        params, opt_state = state.params, state.opt_state
        hyper = exp.hyper(state.step)
        step_metrics = []
        if batch is not None:
            params, opt_state, step_metrics = self._grpo_updates(state, batch, key, hyper, traj_per_update, rows)
        dt = time.time() - t0
        rows_out = []
        for i in range(exp.n):
            summary = {**rollout_metrics(groups[i]), **self.engine_metrics[i]}
            for k in (step_metrics[0] if step_metrics else ()):
                summary[k] = float(np.mean([lay.metric(m, k, i) for m in step_metrics]))
            tokens = float(per[i]["valid"].sum()) if per[i] is not None else 0.0
            summary.update(tokens_per_s=tokens / dt, rollout_s=t_roll, step_s=dt, compiles=exp.compile_count(),
                           updates=float(len(step_metrics)),
                           lr=float(np.asarray(hyper["lr"]).reshape(-1)[i]))
            rows_out.append(summary)
        meta = dict(state.meta, round_step=state.meta["round_step"] + 1, data=exp.train_data.get_state())
        new = TrainState(params, self._park_optimizer(opt_state), state.ref_params, state.step + 1, key, meta)
        del opt_state
        written = self._write(new.step, "grpo", rows_out)
        rewards = [r["reward"] for r in written]
        if exp.n == 1:
            self.progress.update(new.step, "grpo", reward=rewards[0], tok_s=round(written[0]["tokens_per_s"]),
                                 searches=written[0]["searches"])
        else:
            self.progress.update(new.step, "grpo", reward_mean=float(np.mean(rewards)),
                                 reward_best=float(np.max(rewards)), step_s=round(dt, 1))
        return new

    def _grpo_updates(self, state: TrainState, batch: dict, key, hyper, traj_per_update: int, rows: int):
        """The PPO mini-batch updates of one GRPO step over `batch` -> (params, opt_state, metrics)."""
        exp, lay = self.exp, self.layout
        batch.pop("_rows", None)
        head = batch.get("head_idx")  # None: at every position
        batch["old_logps"] = lay.logps(exp.steps.logps, state.params, batch["tokens"], batch["valid"], hyper, rows,
                                       head)
        ref = state.ref_params
        ref = ref.load() if isinstance(ref, ParkedReference) else ref  # read back for this pass only
        batch["ref_logps"] = lay.logps(exp.steps.logps, ref, batch["tokens"], batch["valid"], hyper, rows, head)
        del ref
        self._free_programs("logps")  # (config.train.free_programs) the update is the step's peak
        params, opt_state = state.params, self._optimizer(state)
        self.ckpt.wait()  # the updates donate the state an async save may still be reading
        n_rows = lay.rows(batch)
        perm_key, step_metrics = key, []
        for _ in range(self.c.grpo.epochs):
            perm_key, sub = split_keys(perm_key, 2)
            orders = self._orders(sub, n_rows)
            for lo in range(0, max(n_rows), traj_per_update):
                mb = lay.take(batch, orders, lo, lo + traj_per_update, rows)
                params, opt_state, m = exp.steps.grpo(params, opt_state, mb, hyper)
                step_metrics.append(jax.device_get(m))
        self._free_programs("grpo")  # the next rollout runs without it (config.train.free_programs)
        return params, opt_state, step_metrics

    # ---- the supervised warm start (config.sft) ----
    def _warm_start_data(self):
        from searche1_jax.retrieval.corpus import Corpus
        c, exp = self.c, self.exp
        if not c.retrieval.corpus:
            raise ValueError("config.sft needs config.retrieval.corpus: the passages config.sft.contexts names")
        corpus = Corpus(c.retrieval.corpus)
        rows = {corpus.record(r)[0]: r for r in range(len(corpus))}

        def text(pid):
            if pid not in rows:
                raise ValueError(f"config.sft.contexts names corpus id {pid!r}, which {c.retrieval.corpus} lacks")
            return corpus.record(rows[pid])[1]

        return warm_start.build_warm_start(exp.agent, exp.tokenizer, exp.train_data.examples,
                                           warm_start.load_contexts(c.sft.contexts), text,
                                           max_searches=c.rollout.max_turns, limit=c.sft.questions)

    def sft_phase(self, state: TrainState) -> TrainState:
        c, exp, lay = self.c, self.exp, self.layout
        trajs = self._warm_start_data()
        # rendering compiled ~200 small engine programs (a script's shapes; 0.26 GB on the demo)
        self._free_programs(everything=True)
        batch_rows = lay.share(c.sft.batch, "config.sft.batch")
        micro = lay.share(c.sft.micro_batch, "config.sft.micro_batch")
        params, opt_state = state.params, state.opt_state  # None: made at the first step
        progress = Progress(c.sft.steps)
        while state.meta["sft_step"] < c.sft.steps:
            s, t0 = state.meta["sft_step"], time.time()
            # update s takes trajectories s*B .. (s+1)*B - 1 of the stream of seeded epoch orders
            n, stream = len(trajs), range(s * batch_rows, (s + 1) * batch_rows)
            orders = {e: epoch_order(n, c.train.seed, e) for e in {k // n for k in stream}}
            idx = [int(orders[k // n][k % n]) for k in stream]
            arrays = pack_trajectories([trajs[i] for i in idx], length_bucket=c.sft.length_bucket,
                                       rows_multiple=micro, pad_id=exp.tokenizer.pad_id, head_at_least=self.head_floor)
            batch = lay.combine([arrays] * exp.n, self.sft_dtypes, self.pad)
            n_rows = lay.rows(batch)
            mb = lay.take(batch, [np.arange(n) for n in n_rows], 0, max(n_rows), micro)
            hyper = exp.sft_hyper(s)
            self.ckpt.wait()  # the step donates the state an async save may still be reading
            if opt_state is None or isinstance(opt_state, ParkedOptimizer):
                opt_state = self._optimizer(state)
            params, opt_state, m = exp.steps.sft(params, opt_state, mb, hyper)
            m = jax.device_get(m)
            dt = time.time() - t0
            seq_tokens = float(arrays["valid"].sum())  # every token the forward/backward ran
            rows_out = [{"sft_step": float(s + 1), "sft_loss": lay.metric(m, "sft_loss", i),
                         "grad_norm": lay.metric(m, "grad_norm", i), "trained_tokens": lay.metric(m, "tokens", i),
                         "tokens_per_s": seq_tokens / dt, "step_s": dt,
                         "lr": float(np.asarray(hyper["lr"]).reshape(-1)[i])} for i in range(exp.n)]
            self._write(state.step, "sft", rows_out)
            progress.update(s + 1, "sft", loss=round(rows_out[0]["sft_loss"], 4),
                            tok_s=round(rows_out[0]["tokens_per_s"]))
            state = TrainState(params, opt_state, state.ref_params, state.step, state.rng,
                               dict(state.meta, sft_step=s + 1))
            if (s + 1) % c.checkpoint.every_steps == 0 and s + 1 < c.sft.steps:
                self._save(state)
            self.stop_if_preempted(state)
        # RL starts here: the warm-started policy is the reference (saved once, with the next
        # checkpoint, or now when it is not kept resident: reference.py), with a fresh optimiser
        # state (None: made by the first update; the warm start's is dropped first)
        state = TrainState(params, None, None, state.step, state.rng, dict(state.meta, phase="grpo", reference=SAVED))
        del opt_state
        return dataclasses.replace(state, ref_params=self._reference(params))

    def dev_eval(self, state: TrainState, label: str) -> list[dict]:
        """Greedy EM of each member on the first config.sft.eval_dev dev questions (phase "eval")."""
        c, exp = self.c, self.exp
        examples = exp.dev_examples  # read and checked with the training data (setup.py)
        rows_out = []
        for i in range(exp.n):
            t0 = time.time()
            exp.agent.take_stats()
            policy = exp.policy(state.params, i)
            with failures_agreed("dev eval rollouts", rollout_failure(c.retrieval)):
                em, trajs = greedy_em(exp.agent, policy, examples, batch=c.sft.eval_rows or c.rollout.max_rows or 16)
            # the eval's rollouts carry the engine's counters, as a step's do (`_roll_out`)
            rows_out.append({"label": label, **dev_summary(em, [ex.golden_answers for ex in examples], trajs),
                             **engine_metrics(exp.agent), "eval_s": time.time() - t0})
            if jax.process_index() == 0:
                name = f"{label}_member{i}" if exp.n > 1 else label
                write_dev_answers(os.path.join(self.workdir, "evals", f"{name}.jsonl"), examples, em, trajs)
        self._free_programs(rollouts=True)  # greedy buckets (members share them): the next eval is a phase away
        for r in self._write(state.step, "eval", rows_out):
            print(f"[eval] {label}: dev EM {r['dev_em']:.3f} (95% CI {r['dev_em_lo']:.3f}-{r['dev_em_hi']:.3f}, "
                  f"n={int(r['dev_n'])}; not yes/no {r['dev_em_open']:.3f}, n={int(r['dev_n_open'])}), "
                  f"answered {r['dev_answered']:.2f}, searches {r['dev_searches']:.2f}", flush=True)
        return rows_out

    # ---- one OFSD round: teacher snapshot, roll out, select, distil ----
    def ofsd_round(self, state: TrainState) -> TrainState:
        c, exp, lay = self.c, self.exp, self.layout
        key, rkey, pkey = split_keys(state.rng, 3)
        # the teacher is theta_k, the params as they are now: the rollout and the pages read them in
        # place; the frozen copy the updates need is made only when there is something to distil
        examples = exp.train_data.next_batch(lay.share(c.ofsd.questions, "config.ofsd.questions"))
        groups = self._roll_out(state.params, examples, c.ofsd.group_size, rkey)
        pairs = [distill.select_pairs(g, include_equal=c.ofsd.include_equal) for g in groups]
        self.progress.note(f"[ofsd] round {state.meta['round']}: teacher rolled out {len(groups[0])} groups, "
                           f"{[len(p) for p in pairs]} students, distilling")
        if self.pages:  # before any update: the KL strip compares the student with its teacher snapshot
            theta_k = exp.member_params(state.params, 0)
            self.pages.ofsd_round(groups[0], pairs[0], state.meta["round"], theta_k, theta_k)
            self._free_programs(pages=True)
        mini = lay.share(c.ofsd.mini_batch, "config.ofsd.mini_batch")
        micro = lay.share(c.ofsd.micro_batch, "config.ofsd.micro_batch")
        per = [distill.ofsd_arrays(p, g, exp.tokenizer, rendering=c.ofsd.rendering,
                                   length_bucket=c.ofsd.length_bucket, rows_multiple=np.lcm(mini, micro),
                                   sampled_only=self.head_floor is not None)
               if p else None for p, g in zip(pairs, groups)]
        batch = lay.combine(per, OFSD_DTYPES, self.pad)  # None when no member (process) has a student
        params, opt_state = state.params, state.opt_state  # same optimiser (METHOD §3.6); None: fresh
        # the lr of the GRPO step this round follows, or config.ofsd.lr (METHOD §3.6)
        hyper = exp.hyper(max(state.step - 1, 0), ofsd=True)
        losses = [[] for _ in range(exp.n)]
        if batch is not None:
            self.ckpt.wait()  # the updates donate the state an async save may still be reading
            n_rows = lay.rows(batch)
            snapshot = needs_teacher_copy(c.ofsd.teacher, c.ofsd.epochs, max(n_rows), mini)
            teacher_params = jax.tree.map(jnp.copy, params) if snapshot else None
            opt_state = self._optimizer(state)
            for _ in range(c.ofsd.epochs):
                pkey, sub = split_keys(pkey, 2)
                orders = self._orders(sub, n_rows)
                for lo in range(0, max(n_rows), mini):
                    active = np.asarray([lo < n for n in n_rows])
                    mb = lay.take(batch, orders, lo, lo + mini, micro)
                    args = (lay.place(active),) if lay.population else ()
                    if snapshot:
                        params, opt_state, m = exp.steps.ofsd(params, opt_state, teacher_params, mb, hyper, *args)
                    else:  # the params are their own (stop-gradient) teacher: no second buffer to donate
                        params, opt_state, m = exp.steps.ofsd_live(params, opt_state, mb, hyper, *args)
                    m = jax.device_get(m)
                    for i in np.flatnonzero(active):
                        losses[i].append(lay.metric(m, "ofsd_loss", i))
        rows_out = []
        for i in range(exp.n):
            rows_out.append({"ofsd_groups_used": float(len({p.group for p in pairs[i]})),
                             "ofsd_students": float(len(pairs[i])),
                             **{f"teacher_{k}": v for k, v in
                                {**rollout_metrics(groups[i]), **self.engine_metrics[i]}.items()},
                             "ofsd_loss": float(np.mean(losses[i])) if losses[i] else float("nan"),
                             "ofsd_updates": float(len(losses[i]))})
        meta = dict(state.meta, phase="grpo", round=state.meta["round"] + 1, round_step=0,
                    data=exp.train_data.get_state())
        new = TrainState(params, self._park_optimizer(opt_state), state.ref_params, state.step, key, meta)
        del opt_state
        self._free_programs("ofsd")
        self._write(new.step, "ofsd", rows_out)
        print(f"[ofsd] round {state.meta['round']}: students {[len(p) for p in pairs]}, loss "
              f"{[round(r['ofsd_loss'], 4) for r in rows_out]}", flush=True)
        return new

    def start(self) -> TrainState:
        """The newest intact checkpoint, restored onto `Experiment.abstract_state` (nothing the
        size of the model allocated to describe it), or the initial state of a fresh run."""
        exp = self.exp
        state = None
        if self.ckpt.latest_step() is not None:
            state = self.ckpt.restore_latest(exp.abstract_state(), initial_reference=exp.initial_params)
            exp.release_initial_params()  # held now only if it is the restored run's reference
        if state is None:
            state = exp.initial_state(optimizer=False)  # AdamW's state: made by the first update
            self.metrics.resume(0, 0)  # rows of a run killed before its first checkpoint are redone
        else:
            # orbax writes the JSON meta from process 0; every process is at the same position
            exp.train_data.set_state(dict(state.meta["data"], process_index=jax.process_index()))
            print(f"resumed from step {state.step} (round {state.meta['round']}, {state.meta['phase']})", flush=True)
            self.metrics.resume(state.meta.get("metrics_rows"), state.step)
        state = self._parked(state)
        return dataclasses.replace(state, opt_state=self._park_optimizer(state.opt_state))

    def run(self) -> TrainState:
        c = self.c
        state = self.start()
        self.preemption.install()
        self.progress = Progress(self.total_grpo)
        def evaluate(state, label):  # once per run: the labels done are kept in the checkpoint meta
            if c.sft.eval_dev > 0 and c.data.dev and label not in state.meta.get("evals", []):
                self.dev_eval(state, label)
                state.meta = dict(state.meta, evals=[*state.meta.get("evals", []), label])
                self._save(state, force=True)
            return state

        if state.step == 0 and state.meta.get("sft_step", 0) == 0:
            state = evaluate(state, "base")
        if state.meta["phase"] == "sft":
            state = self.sft_phase(state)
            self._free_programs("sft")
            self._save(state, force=True)
            state = evaluate(state, "warm_start")
        while state.meta["round"] < c.train.rounds:
            if state.meta["phase"] == "grpo":
                while state.meta["round_step"] < c.grpo.steps_per_round:
                    state = self.grpo_step(state)
                    if state.step % c.checkpoint.every_steps == 0:
                        self._save(state)
                    self.stop_if_preempted(state)
                state.meta = (dict(state.meta, phase="ofsd") if c.ofsd.enabled else
                              dict(state.meta, round=state.meta["round"] + 1, round_step=0))
                self._free_programs("logps", "grpo")
                self._save(state, force=True)
            else:
                state = self.ofsd_round(state)
                self._save(state, force=True)
                self.stop_if_preempted(state, saved=True)
        if c.train.rounds > 0:  # with no RL rounds, the warm start (or base) eval is the last one
            state = evaluate(state, "final")
        self.ckpt.close()
        self.preemption.uninstall()
        return state

    def stop_if_preempted(self, state: TrainState, *, saved: bool = False) -> None:
        """After an update: on SIGTERM (any process), save and raise Preempted (preemption.py)."""
        if self.preemption.agreed():
            if not saved:
                self._save(state, force=True)
            self.ckpt.close()
            self.preemption.uninstall()
            raise Preempted(state)
