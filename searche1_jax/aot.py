"""Ahead-of-time compile of a run's real programs at its real shapes, on fake CPU devices.

`python -m searche1_jax.plan --aot ...` lowers the GRPO update, the log-prob pass, the OFSD
update and the rollout engine's decode, append and prefill calls (`program_plan.PROGRAMS`) from
`jax.ShapeDtypeStruct` inputs carrying the shardings a run gives them: the model is built
abstractly (`nnx.eval_shape`), AdamW's state by `Steps.abstract_opt_state`, nothing the size of
the model is allocated. XLA's per-device buffer sizes (`compiled.memory_analysis()`) are then set
beside the planner's estimate and the device's memory.

The devices are CPU devices, so the numbers are XLA:CPU's buffer assignment of the same
partitioned program (the same sharding, collectives and buffer liveness; fusion and layouts can
differ from the GPU / TPU compilers'). The programs are compiled as for an accelerator: no CPU
speed paths (`SpeedPolicy()`: no few-row kernel copies, no logit barrier).
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import time

from searche1_jax.program_plan import PROGRAMS, ProgramShapes

DEVICE_FLAG = "--xla_force_host_platform_device_count"
# the programs are compiled for their memory analysis, never run: LLVM's optimisation (after
# buffer assignment, so the bytes are the same; tests/test_aot.py's tiny programs) is skipped
FAST_CODEGEN = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")


def ensure_devices(n: int) -> None:
    """Make JAX start with (at least) n CPU devices (and FAST_CODEGEN): set XLA_FLAGS before its
    backends start. Raises RuntimeError when they already started with fewer (call this before any jax.devices())."""
    from jax._src import xla_bridge
    if xla_bridge.backends_are_initialized():
        import jax
        have = len(jax.devices("cpu"))
        if have < n:
            raise RuntimeError(f"plan --aot needs {n} fake CPU devices but JAX already started with {have}: "
                               f"run it in a fresh process, or set XLA_FLAGS={DEVICE_FLAG}={n} before "
                               f"importing jax")
        return
    flags = re.sub(rf"{DEVICE_FLAG}=\S+", "", os.environ.get("XLA_FLAGS", "")).strip()
    fast = [f for f in FAST_CODEGEN if f.split("=")[0] not in flags]
    os.environ["XLA_FLAGS"] = " ".join([flags, f"{DEVICE_FLAG}={n}", *fast]).strip()
    import jax
    jax.config.update("jax_platforms", "cpu")


def memory(compiled) -> dict[str, int]:
    """XLA's per-device bytes of a compiled program; peak = argument + output - alias + temp;
    cpu_upcast = the part of temp that is XLA:CPU's fp32 copy of bf16 arguments (`cpu_upcast_bytes`)."""
    ma = compiled.memory_analysis()
    out = {"argument": int(ma.argument_size_in_bytes), "output": int(ma.output_size_in_bytes),
           "alias": int(ma.alias_size_in_bytes), "temp": int(ma.temp_size_in_bytes)}
    out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    out["cpu_upcast"] = cpu_upcast_bytes(compiled.as_text())
    return out


_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\w+)\[([\d,]*)\]\{[^}]*\} ([\w\-]+)\((.*?)\)(.*)$")
_CAST_ONLY = {"parameter", "convert", "bitcast", "reshape", "copy", "transpose"}


def cpu_upcast_bytes(hlo_text: str) -> int:
    """Bytes of the fp32 copies XLA:CPU makes of bf16 / fp16 program arguments: values of the
    entry computation computed from one such argument by converts alone (possibly fused with
    bitcasts / reshapes / copies). XLA:CPU has no bf16 matmul: it converts a dot's bf16 operands to
    fp32, and a loop-invariant one (a weight of the decode loop) is converted once, before the loop,
    so a bf16 weight replica costs twice its bytes again as fp32 temporaries (3B: 12.3 GB). A GPU's
    or TPU's bf16 dot reads bf16 directly. `hlo_text`: the compiled (optimised) module's text."""
    comps: dict[str, list[str]] = {}
    name = None
    for line in hlo_text.splitlines():
        head = re.match(r"^(ENTRY )?%([\w.\-]+) .*\{$", line)
        if head:
            name = "ENTRY" if head.group(1) else head.group(2)
            comps[name] = []
        elif line == "}":
            name = None
        elif name is not None:
            comps[name].append(line)
    rows = [m for m in map(_INSTR.match, comps.get("ENTRY", [])) if m]
    half = {m.group(1) for m in rows if m.group(4) == "parameter" and m.group(2) in ("bf16", "f16")}

    def cast_only(comp: str) -> bool:
        return all(m is None or m.group(4) in _CAST_ONLY for m in map(_INSTR.match, comps.get(comp, ["?"])))

    total = 0
    for m in rows:
        operands = [o.strip().lstrip("%") for o in m.group(5).split(",") if o.strip()]
        if m.group(2) != "f32" or len(operands) != 1 or operands[0] not in half:
            continue
        called = re.search(r"calls=%([\w.\-]+)", m.group(6))
        if m.group(4) == "convert" or (m.group(4) == "fusion" and called and cast_only(called.group(1))):
            total += 4 * math.prod(int(d) for d in m.group(3).split(",") if d)
    return total


def _sds(shape, dtype, sharding=None):
    import jax
    return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding)


def abstract_params(cfg, mesh, rules):
    """(Binder, params as placed ShapeDtypeStructs) of `cfg` on `mesh`: nothing allocated."""
    from flax import nnx

    from searche1_jax.model.create import _nest, abstract_model, param_shardings
    from searche1_jax.train.state import Binder
    graphdef, state, flat = abstract_model(cfg, mesh, rules)
    shard = param_shardings(cfg, mesh, rules)
    params = _nest({k: _sds(v.get_value().shape, v.get_value().dtype, shard[k]) for k, v in flat.items()})
    return Binder(nnx.merge(graphdef, state)), params


class Programs:
    """The lowered programs of one config on one mesh (`lower(name)` -> jax.stages.Lowered).

    c: ExperimentConfig; model_cfg: its ModelConfig (dtypes and remat from c.model);
    mesh_shape {"data", "fsdp", "tensor"}; s: `program_plan.program_shapes`."""

    def __init__(self, c, model_cfg, mesh_shape: dict[str, int], s: ProgramShapes):
        import jax

        from searche1_jax.model.sharding import make_mesh
        from searche1_jax.train.steps import StepConfig, hyper_of, make_steps
        n = mesh_shape["data"] * mesh_shape["fsdp"] * mesh_shape["tensor"]
        if len(jax.devices()) < n:
            raise RuntimeError(f"mesh {mesh_shape} needs {n} devices, JAX has {len(jax.devices())} "
                               f"(aot.ensure_devices({n}) before jax starts)")
        self.c, self.cfg, self.s = c, model_cfg, s
        self.rules = tuple(c.logical_axis_rules)
        self.mesh = make_mesh(dict(mesh_shape), jax.devices()[:n])
        self.binder, self.params = abstract_params(model_cfg, self.mesh, self.rules)
        # compiled as for an accelerator: no CPU speed paths
        self.steps = make_steps(self.binder, dataclasses.replace(StepConfig.from_config(c), logit_barrier=False))
        self.hyper = {k: _sds((), v.dtype) for k, v in hyper_of(c).items()}
        self.opt_state = self.steps.abstract_opt_state(self.params, hyper_of(c))

    def _batch(self, arrays: dict, row_axis: int) -> dict:
        """Host batches: numpy (placed by jit, replicated) with one process; global arrays with
        their rows over the batch axes with several (`multihost.to_global`)."""
        from searche1_jax.model.sharding import named_sharding
        out = {}
        for k, (shape, dtype) in arrays.items():
            sharding = None
            if self.s.processes > 1:
                names = (None,) * row_axis + ("batch",) + (None,) * (len(shape) - row_axis - 1)
                sharding = named_sharding(names, shape, self.mesh, self.rules)
            out[k] = _sds(shape, dtype, sharding)
        return out

    def lower(self, name: str):
        if name not in PROGRAMS:
            raise ValueError(f"unknown program {name!r}; programs: {PROGRAMS}")
        return getattr(self, f"_lower_{name}")()

    def _lower_grpo(self):
        import numpy as np
        s = self.s
        m, b, t = s.grpo_steps, s.grpo_micro, s.train_len
        k = s.head_len or t - 1  # the LM head's positions (config.train.head_on_loss_tokens), or every one
        arrays = {"tokens": ((m, b, t), np.int32), "valid": ((m, b, t), np.bool_),
                  "loss_mask": ((m, b, t), np.int32), "advantages": ((m, b), np.float32),
                  "old_logps": ((m, b, k), np.float32), "ref_logps": ((m, b, k), np.float32)}
        if s.head_len:
            arrays["head_idx"] = ((m, b, k), np.int32)
        return self.steps.grpo.lower(self.params, self.opt_state, self._batch(arrays, row_axis=1), self.hyper)

    def _lower_logps(self):
        import numpy as np
        s = self.s
        arrays = {"tokens": ((s.grpo_micro, s.train_len), np.int32),
                  "valid": ((s.grpo_micro, s.train_len), np.bool_)}
        if s.head_len:
            arrays["head_idx"] = ((s.grpo_micro, s.head_len), np.int32)
        batch = self._batch(arrays, row_axis=0)
        extra = (batch["head_idx"],) if s.head_len else ()
        return self.steps.logps.lower(self.params, batch["tokens"], batch["valid"], self.hyper, *extra)

    def _lower_ofsd(self):
        import numpy as np
        s = self.s
        m, b = s.ofsd_steps, s.ofsd_micro
        batch = self._batch({"tokens": ((m, b, s.ofsd_len), np.int32), "valid": ((m, b, s.ofsd_len), np.bool_),
                             "teacher_tokens": ((m, b, s.teacher_len), np.int32),
                             "teacher_valid": ((m, b, s.teacher_len), np.bool_),
                             "student_idx": ((m, b, s.response_len), np.int32),
                             "teacher_idx": ((m, b, s.response_len), np.int32),
                             "kl_mask": ((m, b, s.response_len), np.int32)}, row_axis=1)
        # the teacher is a frozen copy of the params (config.ofsd.teacher = "snapshot")
        return self.steps.ofsd.lower(self.params, self.opt_state, self.params, batch, self.hyper)

    # ---- the rollout engine's calls ----
    def _rollout_model(self):
        """The policy the engine decodes with (config.rollout.weights, `train/layout.py`): one
        process: "replica", a compute-dtype copy whole over data x fsdp (`rollout/weights.py`),
        or "train", the params bound in place; several: a process-local replica in the compute
        dtype on the process's devices (whole on each, or FSDP over them under "train")."""
        import jax

        from searche1_jax.model.sharding import make_mesh
        from searche1_jax.rollout.weights import decode_rules, replica_config
        replica = self.c.rollout.weights == "replica"
        rules = decode_rules(self.rules) if replica else self.rules
        cfg = replica_config(self.cfg)  # compute dtype, layers unrolled (a process-local copy too)
        if self.s.processes == 1:
            if not replica:
                return self.binder.bind(self.params), self.mesh, self.rules
            binder, params = abstract_params(cfg, self.mesh, rules)
            return binder.bind(params), self.mesh, rules
        t = self.s.replica_tensor  # rollout.replica_tensor devices split each process-local replica
        mesh = make_mesh({"fsdp": -1, "tensor": t}, devices=jax.devices()[:self.s.rollout_devices * t])
        binder, params = abstract_params(cfg, mesh, rules)
        return binder.bind(params), mesh, rules

    def _state(self, cfg, mesh, rules, rows: int):
        """The engine's DecodeState between calls: cache, logits and stop states with their rows
        over the batch axes (what a call returns: `rollout/engine.py`), for a model of `cfg`."""
        import numpy as np

        import jax

        from searche1_jax.model.kv_cache import cache_shardings, init_cache
        from searche1_jax.model.sharding import named_sharding
        from searche1_jax.rollout.sampler import DecodeState
        s = self.s  # cfg: the decoding model's (the replica's layers are unrolled)
        sh = cache_shardings(cfg, rows, s.cache_len, mesh, rules)
        # the cache's shapes in either layout (per layer, or stacked for scan_layers), nothing allocated
        shapes = jax.eval_shape(lambda: init_cache(cfg, rows, s.cache_len))
        cache = jax.tree.map(lambda a, x: _sds(a.shape, a.dtype, x), shapes, sh)
        logits = _sds((rows, cfg.vocab_size), np.float32,
                      named_sharding(("batch", None), (rows, cfg.vocab_size), mesh, rules))
        return DecodeState(cache, logits, _sds((rows,), np.int32, named_sharding(("batch",), (rows,), mesh, rules)))

    def _lower_decode(self):
        import jax
        import numpy as np

        from searche1_jax.model.speed import SpeedPolicy
        from searche1_jax.rollout.agent import STOP_STRINGS
        from searche1_jax.rollout.sampler import SamplingParams, decode
        from searche1_jax.rollout.stop import _byte_aho_corasick
        model, mesh, rules = self._rollout_model()
        s, v = self.s, self.cfg.vocab_size
        b = s.rollout_rows
        states = _byte_aho_corasick([x.encode() for x in STOP_STRINGS])[0].shape[0]
        keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), b))
        params = SamplingParams(temperature=float(self.c.rollout.temperature), top_p=s.top_p, top_k=s.top_k)
        state = self._state(model.cfg, mesh, rules, b)
        return decode.lower(model, state, _sds((b,), np.bool_), keys,
                            stop_table=_sds((states, v), np.int32),
                            stop_rank=_sds((states, len(STOP_STRINGS)), np.int32),
                            stop_enabled=_sds((b, len(STOP_STRINGS)), np.bool_), eos_ids=_sds((2,), np.int32),
                            max_new=s.max_new, params=params, speed=SpeedPolicy(), window=s.cache_len,
                            rows=self._rows(state), budget=_sds((b,), np.int32), offset=_sds((b,), np.int32),
                            exit_below=_sds((), np.int32))

    def _rows(self, state):
        """The working rows a call gathers: the "packed" engine names all of them (its largest
        bucket) as one block per shard of the state's rows (`rollout.packing`), "padded" runs
        all without a gather."""
        import numpy as np

        from searche1_jax.rollout.packing import row_shards
        if self.c.rollout.engine != "packed":
            return None
        b, shards = state.cache.length.shape[0], row_shards(state.cache.k[0])
        return _sds((shards, b // shards), np.int32)

    def _lower_append(self):
        import numpy as np

        from searche1_jax.rollout.sampler import append
        model, mesh, rules = self._rollout_model()
        s = self.s
        b = s.rollout_rows
        state = self._state(model.cfg, mesh, rules, b)
        return append.lower(model, state, _sds((b, s.append_width), np.int32),
                            _sds((b,), np.int32), _sds((), np.int32), window=s.cache_len,
                            rows=self._rows(state))

    def _lower_prefill(self):
        import numpy as np

        from searche1_jax.rollout.sampler import prefill_shared
        model, mesh, rules = self._rollout_model()
        s = self.s
        b, u = s.rollout_rows, s.prefill_rows
        if self.c.rollout.engine != "packed":  # "padded": every row appends its own prompt
            from searche1_jax.rollout.sampler import append
            return append.lower(model, self._state(model.cfg, mesh, rules, b), _sds((b, s.prompt_len), np.int32),
                                _sds((b,), np.int32), _sds((), np.int32), window=s.prefill_window)
        return prefill_shared.lower(model, self._state(model.cfg, mesh, rules, b), _sds((u, s.prompt_len), np.int32),
                                    _sds((u,), np.int32), _sds((b,), np.int32), _sds((), np.int32),
                                    window=s.prefill_window)


def compile_programs(programs: Programs, names=PROGRAMS, log=None) -> dict[str, dict]:
    """{program: XLA's memory (see `memory`) and compile wall seconds} for each of `names`."""
    out = {}
    for name in names:
        t0 = time.perf_counter()
        compiled = programs.lower(name).compile()
        out[name] = dict(memory(compiled), compile_s=time.perf_counter() - t0)
        if log:  # the bytes too: a long run that dies later keeps what it measured
            log(f"  compiled {name} in {out[name]['compile_s']:.0f} s: "
                + ", ".join(f"{k} {v}" for k, v in out[name].items() if k != "compile_s"))
        del compiled
    return out


def shape_label(name: str, s: ProgramShapes) -> str:
    """A program's array sizes in a few characters (global sizes; rows split over devices)."""
    return {"grpo": f"{s.grpo_steps} x [{s.grpo_micro}, {s.train_len}]",
            "logps": f"[{s.grpo_micro}, {s.train_len}]",
            "ofsd": f"{s.ofsd_steps} x [{s.ofsd_micro}, {s.ofsd_len}; teacher {s.teacher_len}]",
            "decode": f"{s.rollout_rows} rows x {s.cache_len}, {s.max_new} new",
            "append": f"{s.rollout_rows} rows + {s.append_width}",
            "prefill": f"{s.prefill_rows} x {s.prompt_len} -> {s.rollout_rows}"}[name]


def aot_report(c, model_cfg, run, mesh_shape: dict[str, int], device: str, *, processes: int = 1,
               privileged_tokens: int = 128, names=PROGRAMS, log=None) -> dict:
    """Compile `names` of config `c` on `mesh_shape` and set XLA's bytes beside the planner's
    (`program_plan.program_memory`) and `device`'s budget (plan.DeviceSpec.budget_bytes).

    A program fits when XLA's peak plus the train state it leaves resident fits the budget.
    Returns a dict (`format_aot` / `markdown_aot` print it)."""
    from searche1_jax.plan import DEVICES
    from searche1_jax.program_plan import program_memory, program_shapes
    if device not in DEVICES:
        raise ValueError(f"--device must be one of {sorted(DEVICES)}, got {device!r}")
    dev = DEVICES[device]
    s = program_shapes(c, run, mesh_shape, processes, privileged_tokens)
    estimate = program_memory(model_cfg, run, mesh_shape, s)
    t0 = time.perf_counter()
    xla = compile_programs(Programs(c, model_cfg, mesh_shape, s), names, log)
    rows = verdicts(xla, estimate, s, dev)
    return {"model": model_cfg, "run": dataclasses.asdict(run), "device": device, "mesh": dict(mesh_shape),
            "processes": processes,
            "shapes": dataclasses.asdict(s), "hbm_bytes": dev.hbm_bytes, "usable_bytes": dev.usable_bytes,
            "budget_bytes": dev.budget_bytes, "programs": rows, "fits": all(r["fits"] for r in rows.values()),
            "compile_s": time.perf_counter() - t0}


def verdicts(xla: dict, estimate: dict, s: ProgramShapes, dev) -> dict[str, dict]:
    """{program: XLA's bytes, the planner's, the resident train state, total and whether it
    fits `dev` (a plan.DeviceSpec): XLA's peak + resident <= dev.budget_bytes}."""
    rows = {}
    for name, x in xla.items():
        e = estimate[name]
        # on the device: XLA's peak less the fp32 copy only XLA:CPU makes of bf16 weights
        total = x["peak"] - x.get("cpu_upcast", 0) + e["resident"]
        rows[name] = {"shape": shape_label(name, s), "xla": x, "estimate": e["program"],
                      "estimate_parts": {k: v for k, v in e.items() if k not in ("program", "resident")},
                      "ratio": e["program"] / max(x["peak"], 1), "resident": e["resident"], "total": total,
                      "fits": total <= dev.budget_bytes}
    return rows


COLUMNS = ("program", "shape (global)", "argument", "output", "alias", "temp", "XLA peak", "planner",
           "plan/XLA", "- CPU fp32 copy", "+ resident", "= total", "verdict")


def _cells(name: str, r: dict) -> list[str]:
    gb = lambda b: f"{b / 1e9:.2f}"  # noqa: E731
    x = r["xla"]
    return [name, r["shape"], gb(x["argument"]), gb(x["output"]), gb(x["alias"]), gb(x["temp"]), gb(x["peak"]),
            gb(r["estimate"]), f"{r['ratio']:.2f}", gb(x.get("cpu_upcast", 0)), gb(r["resident"]), gb(r["total"]),
            "fits" if r["fits"] else "DOES NOT FIT"]


def _header(rep: dict, title: str) -> list[str]:
    from searche1_jax.plan import DEVICES, MEM_FRACTION
    dev = DEVICES[rep["device"]]
    mesh = ",".join(f"{k}:{v}" for k, v in rep["mesh"].items())
    n = rep["mesh"]["data"] * rep["mesh"]["fsdp"] * rep["mesh"]["tensor"]
    bad = [k for k, r in rep["programs"].items() if not r["fits"]]
    return [f"plan --aot {title} on {n} x {dev.name} (mesh {mesh}, {rep['processes']} process"
            f"{'es' if rep['processes'] > 1 else ''}): XLA's per-device bytes of the compiled programs "
            f"(fake CPU devices) beside the planner's estimate; GB = 1e9 bytes",
            f"device HBM {dev.hbm_bytes / 1e9:.2f} GB; JAX's allocator {dev.usable_bytes / 1e9:.2f} GB "
            f"({MEM_FRACTION[dev.platform]:.0%}); budget {dev.budget_bytes / 1e9:.2f} GB (90%); "
            f"total = XLA's peak - XLA:CPU's fp32 copy of bf16 weights (no bf16 matmul on CPU; a GPU or TPU "
            f"multiplies bf16 as it is) + resident (train state outside the program); "
            f"compile {rep['compile_s']:.0f} s",
            "overall: " + ("fits" if rep["fits"] else f"DOES NOT FIT ({', '.join(bad)})")]


def format_aot(rep: dict, title: str = "") -> str:
    cells = [list(COLUMNS)] + [_cells(k, r) for k, r in rep["programs"].items()]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    table = ["  " + "  ".join(c.rjust(w) if 2 <= i <= 11 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    head = _header(rep, title)
    return "\n".join(head[:2] + table + ["  " + head[2]])


def markdown_aot(rep: dict, title: str = "", command: str = "") -> str:
    head = _header(rep, title)
    lines = ([f"`{command}`", ""] if command else []) + [head[0] + ".", head[1] + ".", "",
                                                         "| " + " | ".join(COLUMNS) + " |",
                                                         "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(k, r)) + " |" for k, r in rep["programs"].items()]
    return "\n".join(lines + ["", f"**{head[2]}**"])
