"""A population: N members that differ only in numbers, trained by one compiled, vmapped step.

Member train states (params, optimiser state, reference params) are stacked on a leading
`member` axis [N, ...]; the GRPO / OFSD / log-prob steps are the single-run ones of
`train/steps.py` under `jax.vmap`, and the member axis is sharded over a 1-D device mesh
("member",), so 8 devices run 8 members at once. Per-member hyper-parameters are arrays:

- lr, weight decay and clip norm live in the optimiser state (`optax.inject_hyperparams`);
  the linear warm-up, shared by all members, multiplies the update afterwards, which is the
  same AdamW update as `state.make_optimizer` (the decay term is scaled by lr too).
- kl_coef, entropy_coef and the two temperatures are traced [N] inputs of the step. The
  log-prob and fused-KL kernels take the temperature as a static float, so it is applied to
  the hidden state instead: logits/τ = (h/τ)·W, the kernels then run at τ = 1.

grpo.clip_eps is not a member hyper-parameter: `rl.grpo` checks it with a Python `if`, so it
must be a concrete number (a sweep over it runs one population per value).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from searche1_jax.rl.grpo import grpo_loss
from searche1_jax.rl.logprobs import token_logps_and_entropy
from searche1_jax.rl.ofsd import fused_forward_kl
from searche1_jax.train.state import Binder
from searche1_jax.train.steps import GRPOLossConfig, OFSDLossConfig, _accumulate, _apply, _shift

# member hyper-parameter -> the config field it comes from
HYPER_FIELDS = {"lr": "train.lr", "weight_decay": "train.weight_decay", "grad_clip": "train.grad_clip",
                "kl_coef": "grpo.kl_coef", "entropy_coef": "grpo.entropy_coef",
                "temperature": "rollout.temperature", "ofsd_temperature": "ofsd.temperature"}


def _get(config, field: str):
    section, name = field.split(".")
    return config[section][name]


def member_hypers(configs: Sequence) -> dict[str, np.ndarray]:
    """{name: [N] float32} read from each member's config."""
    return {k: np.asarray([_get(c, f) for c in configs], np.float32) for k, f in HYPER_FIELDS.items()}


def member_mesh(n_members: int, devices: Sequence[jax.Device] | None = None) -> Mesh | None:
    """1-D mesh ("member",) over the most devices that divide the population; None on one."""
    devices = list(devices if devices is not None else jax.devices())
    d = max(k for k in range(1, min(n_members, len(devices)) + 1) if n_members % k == 0)
    return Mesh(np.asarray(devices[:d]), ("member",)) if d > 1 else None


def stack(trees: Sequence) -> dict:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def member(tree, i: int):
    """Member i's slice of a stacked pytree."""
    return jax.tree.map(lambda x: x[i], tree)


def make_population_optimizer(*, total_steps: int, warmup_ratio: float, b1: float = 0.9,
                              b2: float = 0.999) -> tuple[optax.GradientTransformation, Callable]:
    """(optimizer, init(params, hyper) -> opt_state) for one member; vmap both over members.

    The update reads lr / weight decay / clip norm from the state, so one compiled update
    serves every member; `init` writes that member's values into its state.
    """
    def adamw_clipped(learning_rate, weight_decay, max_norm):
        return optax.chain(optax.clip_by_global_norm(max_norm),
                           optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay))

    injected = optax.inject_hyperparams(adamw_clipped)
    warmup = max(int(round(warmup_ratio * total_steps)), 0)

    def build(lr, wd, clip):
        tx = injected(learning_rate=lr, weight_decay=wd, max_norm=clip)
        if not warmup:
            return tx
        ramp = optax.join_schedules([optax.linear_schedule(0.0, 1.0, warmup), optax.constant_schedule(1.0)],
                                    [warmup])
        return optax.chain(tx, optax.scale_by_schedule(ramp))

    def init(params, hyper):
        return build(hyper["lr"], hyper["weight_decay"], hyper["grad_clip"]).init(params)

    return build(0.0, 0.0, 1.0), init


def _tempered(h, temperature):
    """h/τ in h's dtype: (h/τ)·W = logits/τ, so the kernels below run at temperature 1."""
    return (h / temperature).astype(h.dtype)


@dataclasses.dataclass
class PopulationSteps:
    """Jitted, vmapped steps. Every argument and result has the leading member axis.

    grpo(params, opt_state, batch [N, M, mb, ...], hyper) -> (params, opt_state, metrics [N])
    ofsd(params, opt_state, teacher, batch, hyper, active [N] bool) -> same; members with
        active=False keep their params and optimiser state (they ran out of OFSD data)
    logps(params, tokens [N, B, T], valid, hyper) -> [N, B, T-1]
    init(params, hyper) -> opt_state
    """
    grpo: Callable
    ofsd: Callable
    logps: Callable
    init: Callable
    mesh: Mesh | None

    def shard(self, tree):
        """Put host or device arrays on the member axis of the mesh."""
        if self.mesh is None:
            return jax.tree.map(jnp.asarray, tree)
        return jax.device_put(tree, NamedSharding(self.mesh, P("member")))

    def compile_count(self) -> int:
        return sum(f._cache_size() for f in (self.grpo, self.ofsd, self.logps))


def make_population_steps(binder: Binder, optimizer: optax.GradientTransformation, init_fn: Callable,
                          grpo_cfg: GRPOLossConfig, ofsd_cfg: OFSDLossConfig,
                          mesh: Mesh | None) -> PopulationSteps:
    """The single-run steps of `train/steps.py` with traced coefficients, vmapped over members.

    grpo_cfg.temperature / kl_coef / entropy_coef and ofsd_cfg.temperature are ignored: the
    per-member `hyper` arrays carry them.
    """
    if grpo_cfg.agg != "token-mean":
        raise ValueError(f"population steps accumulate micro-batches with agg='token-mean'; got {grpo_cfg.agg!r}")

    def grpo_loss_fn(params, mb, hyper):
        model = binder.bind(params)
        hidden = model(mb["tokens"], mb["valid"], return_hidden=True)
        targets, mask = _shift(mb)
        logps, entropy = token_logps_and_entropy(_tempered(hidden[:, :-1], hyper["temperature"]), model.head(),
                                                 targets, chunk=grpo_cfg.chunk, temperature=1.0)
        loss, metrics = grpo_loss(logps, mb["old_logps"], mb["ref_logps"], mb["advantages"], mask, entropy,
                                  clip_eps=grpo_cfg.clip_eps, kl_coef=hyper["kl_coef"],
                                  kl_estimator=grpo_cfg.kl_estimator, entropy_coef=hyper["entropy_coef"],
                                  agg="token-mean")
        n = mask.sum()
        return loss * n, (jax.tree.map(lambda v: v * n, metrics), n)

    def grpo_member(params, opt_state, batch, hyper):
        grads, loss_sum, msum, count = _accumulate(grpo_loss_fn, params, batch, hyper)
        params, opt_state, gnorm = _apply(optimizer, params, opt_state, grads, count)
        metrics = {k: v / jnp.maximum(count, 1.0) for k, v in msum.items()}
        metrics.update(loss=loss_sum / jnp.maximum(count, 1.0), grad_norm=gnorm, tokens=count)
        return params, opt_state, metrics

    def ofsd_loss_fn(params, mb, extra):
        teacher_params, hyper = extra
        student, teacher = binder.bind(params), binder.bind(teacher_params)
        sh = student(mb["tokens"], mb["valid"], return_hidden=True)
        th = jax.lax.stop_gradient(teacher(mb["teacher_tokens"], mb["teacher_valid"], return_hidden=True))
        gather = lambda h, idx: jnp.take_along_axis(h, idx[..., None], axis=1).reshape(-1, h.shape[-1])  # noqa: E731
        mask = mb["kl_mask"].reshape(-1).astype(jnp.float32)
        tau = hyper["ofsd_temperature"]
        loss = fused_forward_kl(_tempered(gather(sh, mb["student_idx"]), tau), student.head(),
                                _tempered(gather(th, mb["teacher_idx"]), tau),
                                jax.lax.stop_gradient(teacher.head()), None, mask,
                                chunk=ofsd_cfg.chunk, temperature=1.0)
        n = mask.sum()
        return loss * n, ({"kl": loss * n}, n)

    def ofsd_member(params, opt_state, teacher_params, batch, hyper, active):
        grads, loss_sum, _, count = _accumulate(ofsd_loss_fn, params, batch, (teacher_params, hyper))
        new_params, new_state, gnorm = _apply(optimizer, params, opt_state, grads, count)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(active, a, b), new, old)  # noqa: E731
        return keep(new_params, params), keep(new_state, opt_state), {
            "ofsd_loss": loss_sum / jnp.maximum(count, 1.0), "grad_norm": gnorm, "tokens": count}

    def logps_member(params, tokens, valid, hyper):
        model = binder.bind(params)
        hidden = model(tokens, valid, return_hidden=True)
        logps, _ = token_logps_and_entropy(_tempered(hidden[:, :-1], hyper["temperature"]), model.head(),
                                           tokens[:, 1:], chunk=grpo_cfg.chunk, temperature=1.0)
        return logps

    def compile(fn, donate=()):
        if mesh is None:
            return jax.jit(jax.vmap(fn), donate_argnums=donate)
        on_members = NamedSharding(mesh, P("member"))  # every leaf: leading member axis
        return jax.jit(jax.vmap(fn), in_shardings=on_members, out_shardings=on_members, donate_argnums=donate)

    return PopulationSteps(grpo=compile(grpo_member, (0, 1)), ofsd=compile(ofsd_member, (0, 1)),
                           logps=compile(logps_member), init=compile(init_fn), mesh=mesh)
