"""plan --aot: the numbers it prints are XLA's own memory analysis of the very programs a run
compiles, and its verdict compares them with the device's budget.

Oracle: the same steps / rollout calls compiled directly from a concrete model and concrete
arrays placed with the shardings a run gives them (create_model on the mesh, steps.init,
init_cache), not from the abstract inputs `aot.py` builds."""
import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from searche1_jax import aot
from searche1_jax import plan as P
from searche1_jax.config import from_config_dict, load_config_file
from searche1_jax.model.create import create_model
from searche1_jax.model.sharding import make_mesh, named_sharding
from searche1_jax.model.speed import SpeedPolicy
from searche1_jax.program_plan import program_memory, program_shapes
from searche1_jax.rollout.agent import STOP_STRINGS
from searche1_jax.rollout.sampler import DecodeState, SamplingParams, decode
from searche1_jax.rollout.stop import _byte_aho_corasick
from searche1_jax.rollout.weights import rollout_model
from searche1_jax.train.state import Binder, params_of
from searche1_jax.train.steps import StepConfig, hyper_of, make_steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESH = {"data": 1, "fsdp": 8, "tensor": 1}
# the tiny config with batch sizes that 8 devices split (geometry.py)
OVERRIDES = {"grpo.micro_batch": 8, "grpo.mini_batch": 16, "ofsd.micro_batch": 8, "ofsd.mini_batch": 8}


def tiny_config(**extra):
    c = load_config_file(os.path.join(ROOT, "configs", "tiny.py"))
    for key, value in {**OVERRIDES, **{k.replace("__", "."): v for k, v in extra.items()}}.items():
        section, field = key.split(".")
        setattr(getattr(c, section), field, value)
    c = from_config_dict(c)
    model = P.model_config_for(c).replace(dtype=c.model.dtype, param_dtype=c.model.param_dtype, remat=c.model.remat)
    return c, model, P.run_shape_from_config(c, prompt_tokens=32)


@pytest.fixture(scope="module")
def report():
    c, model, run = tiny_config()
    return aot.aot_report(c, model, run, MESH, "h100", names=("grpo", "decode"))


def xla_bytes(compiled) -> dict:
    ma = compiled.memory_analysis()
    return {"argument": ma.argument_size_in_bytes, "output": ma.output_size_in_bytes,
            "alias": ma.alias_size_in_bytes, "temp": ma.temp_size_in_bytes}


def test_grpo_numbers_are_xla_memory_analysis_of_the_real_step(report):
    c, model_cfg, _ = tiny_config()
    s = report["shapes"]
    mesh = make_mesh(MESH)
    model = create_model(model_cfg, mesh=mesh, rules=c.logical_axis_rules)
    params = params_of(model)
    steps = make_steps(Binder(model), dataclasses.replace(StepConfig.from_config(c), logit_barrier=False))
    hyper = hyper_of(c)
    m, b, t = s["grpo_steps"], s["grpo_micro"], s["train_len"]
    # the trainer's batch: the LM head at K = head_len positions (config.train.head_on_loss_tokens)
    k = s["head_len"]
    assert 0 < k < t - 1
    batch = {"tokens": np.zeros((m, b, t), np.int32), "valid": np.ones((m, b, t), bool),
             "loss_mask": np.ones((m, b, t), np.int32), "advantages": np.zeros((m, b), np.float32),
             "old_logps": np.zeros((m, b, k), np.float32), "ref_logps": np.zeros((m, b, k), np.float32),
             "head_idx": np.zeros((m, b, k), np.int32)}
    want = xla_bytes(steps.grpo.lower(params, steps.init(params, hyper), batch, hyper).compile())
    got = report["programs"]["grpo"]["xla"]
    assert {k: got[k] for k in want} == want
    assert got["peak"] == want["argument"] + want["output"] - want["alias"] + want["temp"]
    # params and AdamW are donated: the update writes them in place
    assert want["alias"] > 0 and got["temp"] > 0


def test_decode_numbers_are_xla_memory_analysis_of_the_engine_call(report):
    c, model_cfg, _ = tiny_config()
    s = report["shapes"]
    mesh = make_mesh(MESH)
    # what a run decodes from (config.rollout.weights = "replica"): the copy laid out for decoding
    model = rollout_model(params_of(create_model(model_cfg, mesh=mesh, rules=c.logical_axis_rules)),
                          model_cfg, mesh, c.logical_axis_rules)
    b, v = s["rollout_rows"], model_cfg.vocab_size
    cache = model.init_cache(b, s["cache_len"])
    rows_sharding = lambda shape: named_sharding(("batch",) + (None,) * (len(shape) - 1), shape, mesh)  # noqa: E731
    state = DecodeState(cache, jax.device_put(np.zeros((b, v), np.float32), rows_sharding((b, v))),
                        jax.device_put(np.zeros((b,), np.int32), rows_sharding((b,))))
    states = _byte_aho_corasick([x.encode() for x in STOP_STRINGS])[0].shape[0]
    n = len(STOP_STRINGS)
    compiled = decode.lower(
        model, state, jnp.ones((b,), bool), jax.random.split(jax.random.key(0), b),
        stop_table=jnp.zeros((states, v), jnp.int32), stop_rank=jnp.zeros((states, n), jnp.int32),
        stop_enabled=jnp.ones((b, n), bool), eos_ids=jnp.zeros((2,), jnp.int32), max_new=s["max_new"],
        params=SamplingParams(temperature=c.rollout.temperature, top_p=c.rollout.top_p, top_k=c.rollout.top_k),
        speed=SpeedPolicy(), window=s["cache_len"],
        rows=jnp.arange(b, dtype=jnp.int32).reshape(8, b // 8),  # every row, one block a device
        budget=jnp.zeros((b,), jnp.int32), offset=jnp.zeros((b,), jnp.int32), exit_below=jnp.int32(0)).compile()
    want = xla_bytes(compiled)
    got = report["programs"]["decode"]["xla"]
    assert {k: got[k] for k in want} == want
    assert want["alias"] > 0, "the decode state is donated"


def test_verdict_against_the_device_budget():
    c, model, run = tiny_config()
    s = program_shapes(c, run, MESH)
    est = program_memory(model, run, MESH, s)
    xla = {"grpo": {"argument": 10e9, "output": 9e9, "alias": 9e9, "temp": 20e9, "peak": 30e9}}
    resident = est["grpo"]["resident"]
    h100 = P.DEVICES["h100"]
    # 80 GB x 0.75 (JAX's GPU allocator) x 0.9 headroom = 54 GB
    assert h100.budget_bytes == pytest.approx(54e9)
    assert aot.verdicts(xla, est, s, h100)["grpo"]["fits"]
    small = dataclasses.replace(h100, hbm_bytes=30e9 / 0.75 / 0.9 - 1 + resident)  # 1 byte short
    assert not aot.verdicts(xla, est, s, small)["grpo"]["fits"]
    tiny = dataclasses.replace(h100, hbm_bytes=1e3)
    row = aot.verdicts(xla, est, s, tiny)["grpo"]
    assert not row["fits"] and row["total"] == 30e9 + resident
    assert P.DEVICES["v5e"].budget_bytes == pytest.approx(0.9 * 16e9)  # TPU: all of HBM


def test_the_verdict_leaves_out_the_fp32_weight_copy_only_xla_cpu_makes():
    c, model, run = tiny_config()
    s = program_shapes(c, run, MESH)
    est = program_memory(model, run, MESH, s)
    xla = {"decode": {"argument": 10e9, "output": 9e9, "alias": 9e9, "temp": 20e9, "peak": 30e9,
                      "cpu_upcast": 12e9}}
    row = aot.verdicts(xla, est, s, P.DEVICES["h100"])["decode"]
    assert row["total"] == 30e9 - 12e9 + est["decode"]["resident"]


@pytest.mark.parametrize("dtype,copies", [(jnp.bfloat16, 1), (jnp.float16, 1), (jnp.float32, 0)])
def test_cpu_upcast_is_the_fp32_copy_of_a_half_precision_loop_weight(dtype, copies):
    """XLA:CPU converts a bf16 / fp16 weight that a loop multiplies by to fp32 once, before the
    loop: 4 bytes an element of the weight (a hand count), counted within XLA's temp; an fp32
    weight has no copy; nor has a bf16 argument that no dot reads."""
    def f(w, x, unused):
        return jax.lax.fori_loop(0, 10, lambda i, x: jnp.tanh(x @ w), x), unused * 2

    compiled = jax.jit(f).lower(jax.ShapeDtypeStruct((384, 384), dtype), jax.ShapeDtypeStruct((4, 384), dtype),
                                jax.ShapeDtypeStruct((300, 300), jnp.bfloat16)).compile()
    got = aot.memory(compiled)
    assert got["cpu_upcast"] == copies * 384 * 384 * 4
    assert got["cpu_upcast"] <= got["temp"]


def test_report_prints_does_not_fit_on_a_tiny_device(report):
    c, model, run = tiny_config()
    s = program_shapes(c, run, MESH)
    tiny = dataclasses.replace(P.DEVICES["h100"], hbm_bytes=1e3)
    rows = aot.verdicts({k: r["xla"] for k, r in report["programs"].items()},
                        program_memory(model, run, MESH, s), s, tiny)
    text = aot.format_aot(dict(report, programs=rows, fits=False), "tiny")
    assert "DOES NOT FIT (grpo, decode)" in text and text.count("DOES NOT FIT") == 3
    assert report["fits"] and "DOES NOT FIT" not in aot.format_aot(report, "tiny")
    md = aot.markdown_aot(report, "tiny", "python -m searche1_jax.plan --aot")
    assert md.count("\n| ") == 3 and "| grpo |" in md


def whole_cache_bytes(model, s) -> int:
    """The KV cache of every row of a rollout chunk (all devices together), in the compute dtype."""
    return 2 * model.n_layers * s.rollout_rows * s.cache_len * model.n_kv_heads * model.head_dim * 4  # fp32 tiny


def test_padded_decode_keeps_the_cache_sharded():
    c, model, run = tiny_config(rollout__engine="padded")
    s = program_shapes(c, run, MESH)
    temp = aot.memory(aot.Programs(c, model, MESH, s).lower("decode").compile())["temp"]
    assert temp < whole_cache_bytes(model, s) / 2


def test_scanned_padded_decode_keeps_the_stacked_cache_sharded():
    """model.scan_layers decoding from the training params (rollout.weights "train"; the
    replica is unrolled): the stacked [L, ...] cache is built abstractly, and split as the
    per-layer one (its layers axis maps to no mesh axis)."""
    c, model, run = tiny_config(rollout__engine="padded", rollout__weights="train")
    model = model.replace(scan_layers=True)
    s = program_shapes(c, run, MESH)
    compiled = aot.Programs(c, model, MESH, s).lower("decode").compile()
    assert aot.memory(compiled)["temp"] < whole_cache_bytes(model, s) / 2


def test_packed_decode_keeps_the_cache_sharded():
    """Each device gathers its working rows from its own rows (`rollout.packing`); a global
    jnp.take over the sharded rows made XLA replicate the whole cache (issue 20)."""
    c, model, run = tiny_config()
    s = program_shapes(c, run, MESH)
    temp = aot.memory(aot.Programs(c, model, MESH, s).lower("decode").compile())["temp"]
    assert temp < whole_cache_bytes(model, s) / 2


def test_too_few_devices_already_started_is_refused():
    aot.ensure_devices(8)  # the tests' 8 fake devices: enough
    with pytest.raises(RuntimeError, match="needs 16 fake CPU devices but JAX already started with 8"):
        aot.ensure_devices(16)


def test_cli_starts_jax_with_the_devices_the_mesh_names(report):
    """A fresh process without XLA_FLAGS: --aot asks for the 8 devices itself (and skips LLVM's
    optimisation, which leaves the bytes as they are: the same as this process's compile)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    flags = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    out = subprocess.run([sys.executable, "-m", "searche1_jax.plan", f"--config={ROOT}/configs/tiny.py", *flags,
                          "--mesh=fsdp:8", "--device=h100", "--aot", "--programs=decode", "--prompt_tokens=32",
                          "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rep = json.loads(out.stdout)
    assert rep["mesh"] == MESH and rep["fits"] and list(rep["programs"]) == ["decode"]
    bytes_of = lambda r: {k: v for k, v in r["programs"]["decode"]["xla"].items() if k != "compile_s"}  # noqa: E731
    assert bytes_of(rep) == bytes_of(report)


def aot_json(*flags: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "searche1_jax.plan", *flags, "--aot", "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=7200)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.mark.slow
def test_qwen3b_on_8_h100_compiles_every_program():
    """The paper's configuration on its target hardware (scanned layers, the planner's rollout
    chunk of 320 rows): every program fits by XLA's numbers, and the planner agrees with XLA
    within 20% on each. About 2 min of one core and 2 GB of host memory."""
    rep = aot_json(f"--config={ROOT}/configs/qwen3b.py", "--mesh=fsdp:8", "--device=h100")
    assert list(rep["programs"]) == ["grpo", "logps", "ofsd", "decode", "append", "prefill"]
    for name, row in rep["programs"].items():
        assert 0.8 <= row["ratio"] <= 1.2, (name, row["ratio"])
    assert rep["shapes"]["rollout_rows"] == 320 and rep["fits"], {k: r["total"] for k, r in rep["programs"].items()}
    # decoding from the bf16 replica, XLA:CPU's fp32 copy of it is the whole model in fp32
    assert rep["programs"]["decode"]["xla"]["cpu_upcast"] == pytest.approx(3.086e9 * 4, rel=0.01)


@pytest.mark.slow
def test_qwen3b_on_v5e_64_compiles_on_a_process_mesh():
    """16 processes: each rolls out its 160 rows on its own 4 chips from a bf16 replica, 20 rows
    at a time (the planner's chunk); everything fits a 16 GB chip."""
    rep = aot_json(f"--config={ROOT}/configs/qwen3b.py:instruct,v5e-64", "--mesh=fsdp:64", "--device=v5e",
                   "--processes=16", "--programs=grpo,logps,decode,append,prefill")
    assert rep["shapes"]["rollout_rows"] == 20 and rep["shapes"]["rollout_devices"] == 4
    assert rep["fits"], {k: r["total"] for k, r in rep["programs"].items()}


def test_a_process_local_replica_split_over_tensor_holds_its_share_of_the_weights():
    """rollout.replica_tensor = 2 with 2 processes on 8 devices: each process's 4 devices are
    (fsdp 2, tensor 2) and a decode's weight arguments are half those of a whole replica a
    device (hand count: the replica's bf16 bytes / 2), the rows split over 2 devices, not 4."""
    c, model, run = tiny_config(rollout__replica_tensor=2)
    s2 = program_shapes(c, run, MESH, processes=2)
    c1, _, _ = tiny_config()
    s1 = program_shapes(c1, run, MESH, processes=2)
    assert (s1.rollout_devices, s2.rollout_devices, s2.replica_tensor) == (4, 2, 2)
    m2 = aot.memory(aot.Programs(c, model, MESH, s2).lower("decode").compile())
    m1 = aot.memory(aot.Programs(c1, model, MESH, s1).lower("decode").compile())
    replica = model.num_params * jnp.dtype(c.model.dtype).itemsize
    # the arguments: weights (whole, or half a device) + the cache and the small row states
    assert m1["argument"] - m2["argument"] == pytest.approx(replica / 2, rel=0.15)
