"""The trajectory pages of a run: what each GRPO step and OFSD round shows, and the per-token
KL of the OFSD students shown (`trajectory_pages.py` renders; this file feeds it).

Process 0 writes the pages of member 0 (a population's members share the questions). The
student's KL is the OFSD loss's own divergence (METHOD §3.4): per sampled token, the forward
KL(p_T ‖ p_S) over the whole vocabulary at config.ofsd.temperature, between the teacher reading
the privileged context and the student reading the plain prompt. It is computed when the round
starts, before any update: the student's weights are then the teacher snapshot θ_k, so the strip
shows what the privileged context alone changes, token by token (the signal OFSD distils). Only
the shown students are forwarded, config.ofsd.micro_batch rows at a time (the OFSD step's own
rows, so no more memory than it takes) at a length bucket (one compilation per bucket); several
processes would all have to join that call, so there the page has no strip.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from searche1_jax.rl.kl import divergence_from_logps
from searche1_jax.rl.logprobs import chunk_logits, to_chunks
from searche1_jax.train import trajectory_pages as pages
from searche1_jax.train.distill import ofsd_arrays


def token_forward_kl(student_hidden, student_head, teacher_hidden, teacher_head, *, chunk: int = 512,
                     barrier: bool = False) -> jax.Array:
    """[N] f32 KL(p_T ‖ p_S) = Σ_v p_T (log p_T − log p_S) at each of N positions, with
    p_S = softmax(student_hidden · student_head), p_T likewise (hidden [N, d], heads [d, V]; a
    temperature is applied by scaling the hidden states). At most [chunk, V] logits exist at
    once. Its mean over the sampled tokens is `rl.ofsd.fused_forward_kl`, the OFSD loss."""
    n = student_hidden.shape[0]

    def body(_, xs):
        hs, ht = xs
        logp_s = jax.nn.log_softmax(chunk_logits(hs, student_head, 1.0, barrier), axis=-1)
        logp_t = jax.nn.log_softmax(chunk_logits(ht, teacher_head, 1.0, barrier), axis=-1)
        return None, divergence_from_logps(logp_s, logp_t, "forward")

    _, kl = jax.lax.scan(body, None, (to_chunks(student_hidden, chunk), to_chunks(teacher_hidden, chunk)))
    return kl.reshape(-1)[:n]


def make_student_token_kl(binder, *, chunk: int, barrier: bool = False):
    """jitted (student_params, teacher_params, arrays, temperature) -> [B, R] f32 per-token KL.

    arrays: `distill.ofsd_arrays` of the shown pairs (student tokens/valid [B, T], teacher
    tokens/valid [B, T2], student_idx / teacher_idx [B, R]); row b's column r is the KL at
    response token r of student b (the OFSD step's alignment, `rl.ofsd.aligned_positions`)."""
    def student_token_kl(student_params, teacher_params, arrays, temperature):
        student, teacher = binder.bind(student_params), binder.bind(teacher_params)
        sh = student(arrays["tokens"], arrays["valid"], return_hidden=True)
        th = teacher(arrays["teacher_tokens"], arrays["teacher_valid"], return_hidden=True)

        def gather(h, idx):  # [B, T, d] at [B, R] -> [B*R, d], scaled by 1/τ
            rows = jnp.take_along_axis(h, idx[..., None], axis=1).reshape(-1, h.shape[-1])
            return (rows / temperature).astype(h.dtype)

        kl = token_forward_kl(gather(sh, arrays["student_idx"]), student.head(),
                              gather(th, arrays["teacher_idx"]), teacher.head(), chunk=chunk, barrier=barrier)
        return kl.reshape(arrays["student_idx"].shape)

    return jax.jit(student_token_kl)


KL_KEYS = ("tokens", "valid", "teacher_tokens", "teacher_valid", "student_idx", "teacher_idx")


class TrajectoryLog:
    """Writes WORKDIR/trajectories/ pages and keeps its index current.

    limit: groups shown per GRPO step, students per OFSD round; rendering, length_bucket,
    temperature, chunk: config.ofsd's; rows: students forwarded at once (config.ofsd.micro_batch);
    binder: the model's (None: OFSD pages without the KL)."""

    def __init__(self, workdir: str, tokenizer, *, limit: int, rendering: str, length_bucket: int,
                 temperature: float, binder=None, chunk: int = 512, barrier: bool = False, rows: int = 1):
        if limit < 1:
            raise ValueError(f"config.log.trajectory_groups must be >= 1 to write pages, got {limit}")
        self.workdir, self.tok, self.limit = workdir, tokenizer, limit
        self.rendering, self.length_bucket, self.temperature = rendering, length_bucket, temperature
        self.rows = rows
        self._kl = make_student_token_kl(binder, chunk=chunk, barrier=barrier) if binder is not None else None

    @classmethod
    def from_experiment(cls, exp, workdir: str) -> TrajectoryLog:
        from searche1_jax.train.steps import StepConfig
        c = exp.config
        binder = exp.binder if jax.process_count() == 1 else None
        return cls(workdir, exp.tokenizer, limit=c.log.trajectory_groups, rendering=c.ofsd.rendering,
                   length_bucket=c.ofsd.length_bucket, temperature=c.ofsd.temperature, binder=binder,
                   chunk=c.ofsd.logit_chunk, barrier=StepConfig.from_config(c).logit_barrier,
                   rows=c.ofsd.micro_batch)

    def grpo_step(self, groups, advantages, step: int) -> str:
        """advantages: [>= total trajectories] in row order (padding rows after them are cut)."""
        total = sum(len(g.trajectories) for g in groups)
        page = pages.grpo_page(groups, np.asarray(advantages)[:total], step, self.tok, limit=self.limit)
        path = pages.write_page(self.workdir, pages.grpo_name(step), page)
        pages.write_index(self.workdir)
        return path

    def student_kl(self, groups, pairs, student_params, teacher_params) -> list[np.ndarray]:
        """One [len(response_ids)] per-token KL array per pair (at most `limit` pairs)."""
        arrays = ofsd_arrays(list(pairs), groups, self.tok, rendering=self.rendering,
                             length_bucket=self.length_bucket, rows_multiple=self.rows)
        kl = np.concatenate([np.asarray(jax.device_get(self._kl(
            student_params, teacher_params, {k: jnp.asarray(arrays[k][lo:lo + self.rows]) for k in KL_KEYS},
            jnp.float32(self.temperature)))) for lo in range(0, arrays["tokens"].shape[0], self.rows)])
        return [kl[i, :len(groups[p.group].trajectories[p.student].response_ids)] for i, p in enumerate(pairs)]

    def free(self) -> None:
        """Drop the per-token KL's compiled programs (config.train.free_programs)."""
        if self._kl is not None:
            self._kl.clear_cache()

    def ofsd_round(self, groups, pairs, round_index: int, student_params=None, teacher_params=None) -> str:
        shown = list(pairs)[:self.limit]
        kl, note = None, "No per-token KL on this page (several processes, or no model given)."
        if self._kl is not None and shown and student_params is not None:
            kl = self.student_kl(groups, shown, student_params, teacher_params)
            note = ("Per-token KL at the start of the round: student weights = teacher snapshot, so it "
                    "measures what the privileged context changes.")
        page = pages.ofsd_page(groups, pairs, round_index, self.tok, rendering=self.rendering, kl=kl,
                               limit=self.limit, note=note)
        path = pages.write_page(self.workdir, pages.ofsd_name(round_index), page)
        pages.write_index(self.workdir)
        return path
