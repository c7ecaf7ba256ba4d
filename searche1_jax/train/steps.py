"""The jitted train steps of a single run and of a population: one set of member functions.

Every step is written for ONE member (params, optimiser state, batch, `hyper`) and compiled
either as it is (a single run: params laid out over the (data, fsdp, tensor) mesh) or under
`jax.vmap` over a leading member axis (a sweep population: members on a ("member",) mesh).
The numbers a sweep varies are traced inputs, never constants of the compiled program, so one
executable serves every step of every member whatever its lr or coefficients:

  hyper = {"lr", "weight_decay", "grad_clip", "kl_coef", "entropy_coef", "temperature",
           "ofsd_temperature"}: float32 scalars (a single run) or [N] (a population).

The learning rate is an input of every update, computed on the host from the GRPO step
(`lr_at`, METHOD §2): every update inside a step uses that step's lr and OFSD updates do
not advance the clock. Temperatures scale the hidden state, (h/τ)·W = logits/τ, so the
chunked log-prob and KL kernels run at τ = 1.

Batches carry a micro-batch axis [M, mb, ...]; a `lax.scan` accumulates gradients of each
micro-batch's loss numerator and its count (`rl.grpo.aggregate_count`) and the step divides once
by the summed count. Under GRPO's default token-mean (and OFSD) that is each micro-batch's
token-loss *sum* over the batch's token count, so the update equals one big batch whatever M
is; under the compat mode agg = "micro_token_mean" it is each micro-batch's token-*mean* over
the number of micro-batches, as veRL (see `member_functions`). Params and optimiser state are
donated.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from searche1_jax.config import GRPO_AGG_MODES
from searche1_jax.model.speed import SpeedPolicy
from searche1_jax.programs import LeanJit
from searche1_jax.rl.grpo import aggregate_count, grpo_loss
from searche1_jax.rl.logprobs import token_logps_and_entropy
from searche1_jax.rl.ofsd import fused_forward_kl
from searche1_jax.train.placement import PlacedInit, abstract
from searche1_jax.train.state import Binder

# member hyper-parameter -> the config field it is read from
HYPER_FIELDS = {"lr": "train.lr", "weight_decay": "train.weight_decay", "grad_clip": "train.grad_clip",
                "kl_coef": "grpo.kl_coef", "entropy_coef": "grpo.entropy_coef",
                "temperature": "rollout.temperature", "ofsd_temperature": "ofsd.temperature"}


def hyper(*, lr: float, weight_decay: float, grad_clip: float, kl_coef: float, entropy_coef: float,
          temperature: float, ofsd_temperature: float) -> dict[str, np.float32]:
    """One member's traced hyper-parameters as float32 scalars (every one named: no hidden
    defaults; a config's values come through `hyper_of`)."""
    return {k: np.float32(v) for k, v in dict(
        lr=lr, weight_decay=weight_decay, grad_clip=grad_clip, kl_coef=kl_coef, entropy_coef=entropy_coef,
        temperature=temperature, ofsd_temperature=ofsd_temperature).items()}


def hyper_of(config, lr: float | None = None) -> dict[str, np.float32]:
    """One member's hyper-parameters from its config; `lr` replaces train.lr (the host passes
    the scheduled lr of the current GRPO step)."""
    values = {}
    for name, field in HYPER_FIELDS.items():
        section, key = field.split(".")
        values[name] = getattr(getattr(config, section), key)
    if lr is not None:
        values["lr"] = lr
    return hyper(**values)


def lr_at(step: int, lr: float, *, total_steps: int, warmup_ratio: float) -> float:
    """lr(s) = lr·min(1, s / ⌊warmup_ratio·S⌋) for GRPO step s = 0, 1, ... of S (METHOD §2:
    step 0 runs at lr 0; constant after the warm-up; no warm-up when ⌊warmup_ratio·S⌋ = 0)."""
    warmup = int(np.floor(warmup_ratio * total_steps))
    return float(lr) if warmup <= 0 else float(lr) * min(1.0, step / warmup)


def adamw(hyper) -> optax.GradientTransformation:
    """AdamW after global-norm clipping, its numbers read from `hyper` (traced or concrete).

    The state's structure does not depend on the numbers, so `adamw(any hyper).init(params)`
    is every member's initial state and the update can take this step's values."""
    return optax.chain(optax.clip_by_global_norm(hyper["grad_clip"]), _adamw_alone(hyper))


def _adamw_alone(hyper) -> optax.GradientTransformation:
    return optax.adamw(hyper["lr"], b1=0.9, b2=0.999, weight_decay=hyper["weight_decay"])


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What is compiled into the steps (changing one of these compiles a new program)."""
    clip_eps: float = 0.2
    kl_estimator: str = "k3"
    agg: str = "token-mean"    # one of GRPO_AGG_MODES (see `member_functions`)
    grpo_chunk: int = 1024     # tokens per chunk of the LM head / log-softmax (GRPO)
    ofsd_chunk: int = 512      # tokens per chunk of the fused forward KL (OFSD)
    logit_barrier: bool = False  # fence the logit matmul off the softmax (SpeedPolicy: XLA:CPU)

    @classmethod
    def from_config(cls, c) -> StepConfig:
        return cls(clip_eps=float(c.grpo.clip_eps), kl_estimator=c.grpo.kl_estimator, agg=c.grpo.agg,
                   grpo_chunk=int(c.grpo.logit_chunk), ofsd_chunk=int(c.ofsd.logit_chunk),
                   logit_barrier=SpeedPolicy.for_backend().logit_barrier)


def _tempered(h, temperature):
    """h/τ in h's dtype: (h/τ)·W = logits/τ, so the kernels run at temperature 1."""
    return (h / temperature).astype(h.dtype)


def _at(x, idx):
    """x [B, T, ...] at positions idx [B, K] of each row -> [B, K, ...] (rows kept apart)."""
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def _head_positions(hidden, tokens, head_idx=None):
    """The positions a step runs the LM head at: (hidden [B, P, d], targets [B, P]).

    With head_idx [B, K] (`batching.head_positions`): the K positions that predict a loss
    token (hidden at t predicts token t + 1); the gathers' backward scatters into the hidden
    state. Without it: every position but the last (P = T - 1)."""
    if head_idx is None:
        return hidden[:, :-1], tokens[:, 1:]
    return _at(hidden, head_idx), _at(tokens, head_idx + 1)


def _head_view(hidden, batch):
    """`_head_positions` of a train batch, and the loss mask there: (hidden, targets, mask [B, P])."""
    idx = batch.get("head_idx")
    hidden, targets = _head_positions(hidden, batch["tokens"], idx)
    mask = batch["loss_mask"][:, 1:] if idx is None else _at(batch["loss_mask"], idx + 1)
    return hidden, targets, mask.astype(jnp.float32)


def _accumulate(loss_fn, params, batch, extra):
    """Scan micro-batches; loss_fn returns (loss numerator, (metric sums, tokens, count)).

    The update's loss and gradient are Σ numerator / Σ count, its metrics Σ sums / Σ tokens."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def body(acc, micro):
        (loss_sum, (msum, tokens, count)), g = grad_fn(params, micro, extra)
        g_acc, l_acc, m_acc, t_acc, c_acc = acc
        return (jax.tree.map(jnp.add, g_acc, g), l_acc + loss_sum,
                jax.tree.map(jnp.add, m_acc, msum), t_acc + tokens, c_acc + count), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    first = jax.tree.map(lambda x: x[0], batch)
    m_shape = jax.eval_shape(lambda: loss_fn(params, first, extra)[1][0])
    m0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m_shape)
    (grads, loss_sum, msum, tokens, count), _ = jax.lax.scan(body, (zeros, 0.0, m0, 0.0, 0.0), batch)
    return grads, loss_sum, msum, tokens, count


def _apply(params, opt_state, grads, count, hyper):
    """AdamW on the mean gradient Σg / count after global-norm clipping: `adamw(hyper).update`'s
    numbers (the clip's factor multiplies g / count instead of dividing it by the norm: the same
    up to the last bit when it clips, bit-equal when it does not), with the clip folded into one
    scalar so that the update reads the summed gradient once. optax's clip_by_global_norm makes a
    clipped copy of every gradient: XLA's temp was 2.00x the parameter bytes with it, 1.29x
    folded (a 6-layer model, every micro-batching). -> (params, opt_state, norm of the mean
    gradient before clipping). opt_state keeps `adamw`'s structure: (clip's empty state, AdamW's)."""
    c = jnp.maximum(count, 1.0)
    norm = optax.tree.norm(jax.tree.map(lambda g: g / c, grads))
    clip = hyper["grad_clip"]
    factor = jnp.where(norm < clip, 1.0, clip / norm)
    clipped = jax.tree.map(lambda g: (g / c) * factor.astype(g.dtype), grads)
    clip_state, adam_state = opt_state
    updates, adam_state = _adamw_alone(hyper).update(clipped, adam_state, params)
    return optax.apply_updates(params, updates), (clip_state, adam_state), norm


def member_functions(binder: Binder, cfg: StepConfig) -> dict[str, Callable]:
    """The un-jitted steps of one member:

    logps(params, tokens [B,T], valid [B,T], hyper[, head_idx [B,K]]) -> log π(token_t | <t)
        [B, T-1], of tokens[:, 1:]; with head_idx, [B, K] of tokens[b, head_idx + 1] only.
    grpo(params, opt_state, batch, hyper) -> (params, opt_state, metrics); batch [M, mb, ...]:
        tokens, valid, loss_mask (1 on sampled tokens), old_logps and ref_logps [T-1] aligned
        with tokens[:, 1:], advantages []. Optional head_idx [K] (`batching.head_positions`):
        the LM head runs at those positions only, and old_logps / ref_logps are [K], aligned
        with them (`logps` with the same head_idx); the loss is the same. The loss is
        aggregated as cfg.agg says:
        "token-mean": the exact mean over every unmasked token of the batch (METHOD §2).
        "micro_token_mean" (compat): the plain mean, over the micro-batches [mb, ...] of the
            batch that have an unmasked token, of each one's token-mean of
            pg + β·KL_k3 − c_H·entropy, as Search-R1's veRL (`dp_actor.py::update_policy`: a
            micro-batch's `masked_mean` loss / gradient-accumulation steps, then gradients
            averaged over GPUs = the mean over all (GPU, micro-batch) pieces). The unit is one
            scan micro-batch: config.grpo.micro_batch trajectories *in total*, however they are
            laid out (several processes each give micro_batch / P of its rows; a mesh splits
            its rows over data x fsdp), so the loss does not depend on the mesh. With
            config.grpo.micro_batch = veRL's per-GPU micro-batch (METHOD §2: 8) there are as
            many pieces of as many rows as in veRL (mini_batch / micro_batch = GPUs x
            accumulation steps). What differs: a veRL piece lives on one GPU and holds
            consecutive rows of that GPU's share of the batch; ours holds consecutive rows of
            the step's random permutation, spread over our devices (which rows share a piece,
            not the estimator's form). An all-padding micro-batch (row padding) is left out
            of the mean; veRL's batches divide evenly and it divides by a fixed count.
        Metrics (pg_loss, clip_frac, kl_ref, entropy, ...) are token-means in either mode;
        `loss` is the aggregated loss the update minimises.
    ofsd(params, opt_state, teacher_params, batch, hyper, active) -> same; batch [M, mb, ...]:
        student tokens/valid [T], teacher tokens/valid [T2] (the same sequence with the
        privileged context inserted), student_idx / teacher_idx [R] (the positions whose
        hidden state predicts each response token in either sequence), kl_mask [R] (1 on
        sampled tokens). The teacher is under stop-gradient. active=False keeps params and
        optimiser state (a population member that ran out of OFSD data).
    sft(params, opt_state, batch, hyper) -> same; batch [M, mb, ...]: tokens, valid, loss_mask
        (and head_idx, as grpo's).
        The warm start's token-mean negative log-likelihood of the loss-masked tokens (T = 1).
    init(params, hyper) -> opt_state
    """
    if cfg.agg not in GRPO_AGG_MODES:
        raise ValueError(f"config.grpo.agg must be one of {GRPO_AGG_MODES}, got {cfg.agg!r}")

    def logps(params, tokens, valid, hyper, head_idx=None):
        model = binder.bind(params)
        hidden, targets = _head_positions(model(tokens, valid, return_hidden=True), tokens, head_idx)
        out, _ = token_logps_and_entropy(_tempered(hidden, hyper["temperature"]), model.head(),
                                         targets, chunk=cfg.grpo_chunk, temperature=1.0,
                                         barrier=cfg.logit_barrier, layout=model.layout())
        return out

    def grpo_loss_fn(params, mb, hyper):
        model = binder.bind(params)
        hidden, targets, mask = _head_view(model(mb["tokens"], mb["valid"], return_hidden=True), mb)
        lp, entropy = token_logps_and_entropy(_tempered(hidden, hyper["temperature"]), model.head(),
                                              targets, chunk=cfg.grpo_chunk, temperature=1.0,
                                              barrier=cfg.logit_barrier, layout=model.layout())
        loss, metrics = grpo_loss(lp, mb["old_logps"], mb["ref_logps"], mb["advantages"], mask, entropy,
                                  clip_eps=cfg.clip_eps, kl_coef=hyper["kl_coef"],
                                  kl_estimator=cfg.kl_estimator, entropy_coef=hyper["entropy_coef"],
                                  agg=cfg.agg)
        # count: tokens (token-mean) or 1 for a micro-batch with a token (micro_token_mean)
        n, count = mask.sum(), aggregate_count(mask, cfg.agg)
        return loss * count, (jax.tree.map(lambda v: v * n, metrics), n, count)  # metrics token-weighted

    def grpo(params, opt_state, batch, hyper):
        grads, loss_sum, msum, tokens, count = _accumulate(grpo_loss_fn, params, batch, hyper)
        params, opt_state, gnorm = _apply(params, opt_state, grads, count, hyper)
        metrics = {k: v / jnp.maximum(tokens, 1.0) for k, v in msum.items()}
        metrics.update(loss=loss_sum / jnp.maximum(count, 1.0), grad_norm=gnorm, tokens=tokens)
        return params, opt_state, metrics

    def ofsd_loss_fn(params, mb, extra):
        teacher_params, hyper = extra
        student, teacher = binder.bind(params), binder.bind(teacher_params)
        sh = student(mb["tokens"], mb["valid"], return_hidden=True)
        th = jax.lax.stop_gradient(teacher(mb["teacher_tokens"], mb["teacher_valid"], return_hidden=True))
        # [B, R, d]: the response positions of each row, rows kept apart (their batch sharding)
        mask = mb["kl_mask"].astype(jnp.float32)
        tau = hyper["ofsd_temperature"]
        loss = fused_forward_kl(_tempered(_at(sh, mb["student_idx"]), tau), student.head(),
                                _tempered(_at(th, mb["teacher_idx"]), tau),
                                jax.lax.stop_gradient(teacher.head()), None, mask,
                                chunk=cfg.ofsd_chunk, temperature=1.0, barrier=cfg.logit_barrier,
                                layout=student.layout())
        n = mask.sum()
        return loss * n, ({"kl": loss * n}, n, n)  # token-mean

    def ofsd(params, opt_state, teacher_params, batch, hyper, active=True):
        grads, loss_sum, _, _, count = _accumulate(ofsd_loss_fn, params, batch, (teacher_params, hyper))
        new_params, new_state, gnorm = _apply(params, opt_state, grads, count, hyper)
        if active is not True:  # a population member without data this update keeps its state
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(active, a, b), new, old)  # noqa: E731
            new_params, new_state = keep(new_params, params), keep(new_state, opt_state)
        return new_params, new_state, {"ofsd_loss": loss_sum / jnp.maximum(count, 1.0),
                                       "grad_norm": gnorm, "tokens": count}

    def sft_loss_fn(params, mb, hyper):
        model = binder.bind(params)
        hidden, targets, mask = _head_view(model(mb["tokens"], mb["valid"], return_hidden=True), mb)
        lp, _ = token_logps_and_entropy(hidden, model.head(), targets, chunk=cfg.grpo_chunk,
                                        temperature=1.0, barrier=cfg.logit_barrier, layout=model.layout())
        n = mask.sum()
        return -(lp * mask).sum(), ({}, n, n)  # token-mean NLL of the policy's turns

    def sft(params, opt_state, batch, hyper):
        grads, loss_sum, _, tokens, count = _accumulate(sft_loss_fn, params, batch, hyper)
        params, opt_state, gnorm = _apply(params, opt_state, grads, count, hyper)
        return params, opt_state, {"sft_loss": loss_sum / jnp.maximum(count, 1.0), "grad_norm": gnorm,
                                   "tokens": tokens}

    def init(params, hyper):
        return adamw(hyper).init(params)

    return {"logps": logps, "grpo": grpo, "ofsd": ofsd, "sft": sft, "init": init}


@dataclasses.dataclass
class Steps:
    """The compiled steps (see `member_functions` for the signatures; a population's arguments
    and results all have a leading member axis, and its `ofsd` takes `active` [N] bool)."""
    logps: Callable
    grpo: Callable
    ofsd: Callable
    ofsd_live: Callable  # ofsd(params, opt_state, batch, hyper[, active]) with params as their own teacher
    sft: Callable
    init: Callable  # a single run's is a `PlacedInit`: m and v born with their parameters' shardings

    def abstract_opt_state(self, params, hyper):
        """The optimiser state `init(params, hyper)` would create, as ShapeDtypeStructs placed
        where it would live (params may be abstract too): a restore target, nothing allocated."""
        if isinstance(self.init, PlacedInit):
            return self.init.abstract(params, hyper)
        return abstract(jax.eval_shape(self.init, params, hyper))

    def compile_count(self) -> int:
        """Compiled executables of the train steps held now (flat across steps once buckets are
        warm; `free` drops them)."""
        return sum(f._cache_size() for f in (self.logps, self.grpo, self.ofsd, self.ofsd_live, self.sft))

    def free(self, *names: str) -> None:
        """Drop the compiled programs of the named steps ("logps", "grpo", "ofsd", "sft"; "ofsd"
        includes `ofsd_live`): their next call compiles again. On CPU each holds 0.1-0.4 GB of
        host memory for a 135M model (one per length bucket)."""
        for name in names:
            for f in ((self.ofsd, self.ofsd_live) if name == "ofsd" else (getattr(self, name),)):
                f.clear_cache()


def make_steps(binder: Binder, cfg: StepConfig, *, population: bool = False, mesh=None) -> Steps:
    """Jit the member functions: as they are (population=False), or over a leading member axis
    (population=True) split across the ("member",) `mesh` (None: all members on one device).

    A device holding one member runs the plain member function on it (the member axis is
    dropped inside the device's program), so a population of one, or N members on N devices,
    runs exactly the single-run program per device: `jax.vmap` of a size-1 axis would turn the
    2-D matmuls into batched ones (1.39x the step time on XLA:CPU, benchmarks/population_of_one).
    A device holding k > 1 members runs the member function vmapped over them.
    """
    fns = member_functions(binder, cfg)
    if not population:
        ofsd = fns["ofsd"]
        jit = lambda f, donate=(): LeanJit(jax.jit(f, donate_argnums=donate))  # noqa: E731 (programs.py)
        return Steps(logps=jit(fns["logps"]), grpo=jit(fns["grpo"], (0, 1)),
                     ofsd=jit(lambda p, s, t, b, h: ofsd(p, s, t, b, h), (0, 1)),
                     ofsd_live=jit(lambda p, s, b, h: ofsd(p, s, p, b, h), (0, 1)),
                     sft=jit(fns["sft"], (0, 1)), init=PlacedInit(fns["init"], adamw))

    def on_members(fn, donate=()):
        def per_device(*args):  # this device's block of members: every leaf [k, ...]
            k = jax.tree.leaves(args)[0].shape[0]
            if k > 1:
                return jax.vmap(fn)(*args)
            out = fn(*jax.tree.map(lambda x: x[0], args))
            return jax.tree.map(lambda x: x[None], out)

        if mesh is None:
            return LeanJit(jax.jit(per_device, donate_argnums=donate))
        spec = PartitionSpec("member")
        sharded = jax.shard_map(per_device, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)
        placed = NamedSharding(mesh, spec)
        return LeanJit(jax.jit(sharded, donate_argnums=donate, in_shardings=placed, out_shardings=placed))

    return Steps(logps=on_members(fns["logps"]), grpo=on_members(fns["grpo"], (0, 1)),
                 ofsd=on_members(fns["ofsd"], (0, 1)),
                 ofsd_live=on_members(lambda p, s, b, h, a: fns["ofsd"](p, s, p, b, h, a), (0, 1)),
                 sft=on_members(fns["sft"], (0, 1)),
                 init=on_members(fns["init"]))
