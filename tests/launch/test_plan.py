"""The capacity planner's formulas, against numbers worked out by hand from the presets' dims."""
import dataclasses
import math

import numpy as np
import pytest

from searche1_jax import plan as P
from searche1_jax.config import model_overrides
from searche1_jax.model.config import get_preset

TINY = get_preset("tiny")  # V 512, d 64, L 2, 4 q / 2 kv heads x 16, mlp 128, qkv bias, tied


def tiny_params_by_hand():
    embed = 512 * 64
    attn = 64 * 64 + 64 + 2 * (64 * 32 + 32) + 64 * 64   # q (+bias), k and v (+bias), o
    mlp = 3 * 64 * 128
    norms = 2 * 64
    return embed + 2 * (attn + mlp + norms) + 64          # + final norm; head tied


def shape(**kw):
    base = dict(questions_per_step=4, group_size=4, micro_batch=8, epochs=1, max_turns=2,
                max_turn_tokens=16, max_obs_tokens=64, max_response_tokens=160, prompt_tokens=32,
                fill=1.0, grpo_chunk=128, ofsd_chunk=128, param_dtype="float32", dtype="float32",
                remat=False)
    base.update(kw)
    return P.RunShape(**base)


def test_tiny_param_count_is_the_hand_count_and_the_real_model_size():
    from searche1_jax.model.create import abstract_model
    _, _, flat = abstract_model(TINY)
    real = sum(int(np.prod(v.get_value().shape)) for v in flat.values())
    assert tiny_params_by_hand() == 107072 == real
    mem = P.memory_plan(TINY, shape(), {"data": 1, "fsdp": 4, "tensor": 2})
    assert mem["num_params"] == 107072


def test_qwen3b_has_3_09_billion_parameters():
    d, L, V, m, hd = 2048, 36, 151936, 11008, 128
    by_hand = V * d + L * (d * 16 * hd + 2 * d * 2 * hd + 16 * hd * d + (16 + 4) * hd + 3 * d * m + 2 * d) + d
    n = P.memory_plan(get_preset("qwen2.5-3b"), shape(), {"data": 1, "fsdp": 8, "tensor": 1})["num_params"]
    assert n == by_hand
    assert abs(n / 1e9 - 3.09) <= 0.01


def test_tiny_state_bytes_per_device():
    n = tiny_params_by_hand()
    mem = P.memory_plan(TINY, shape(), {"data": 2, "fsdp": 2, "tensor": 2})
    shard = 2 * 2                                         # fsdp x tensor; data replicates
    assert mem["params"] == n * 4 / shard
    assert mem["master_fp32"] == 0                        # fp32 params are the master copy
    assert mem["adam_mv_fp32"] == n * 8 / shard
    assert mem["grads"] == 2 * n * 4 / shard
    bf16 = P.memory_plan(TINY, shape(param_dtype="bfloat16"), {"data": 2, "fsdp": 2, "tensor": 2})
    assert bf16["params"] == n * 2 / shard and bf16["master_fp32"] == n * 4 / shard


def test_a_parked_reference_leaves_the_state_and_the_programs_resident_bytes():
    """config.train.reference_resident off: no reference bytes in the state, and every program
    that held it beside its own (GRPO update, OFSD update, the rollout calls) holds one params
    fewer; the log-prob pass still reads one of params / reference beside AdamW."""
    import os

    from searche1_jax.program_plan import program_memory, program_shapes
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    mesh = {"data": 1, "fsdp": 8, "tensor": 1}
    c, m, run, _ = _picked(f"{root}/configs/qwen3b.py", mesh, "h100", 1)
    parked = dataclasses.replace(run, reference_resident=False)
    n, shard = m.num_params, 8
    plan_on, plan_off = P.memory_plan(m, run, mesh), P.memory_plan(m, parked, mesh)
    assert plan_on["ref_params"] == n * 4 / shard and plan_off["ref_params"] == 0.0
    on = program_memory(m, run, mesh, program_shapes(c, run, mesh, 1))
    off = program_memory(m, parked, mesh, program_shapes(c, parked, mesh, 1))
    for prog in ("grpo", "ofsd", "decode", "append", "prefill"):
        assert on[prog]["resident"] - off[prog]["resident"] == n * 4 / shard, prog
    assert on["logps"]["resident"] == off["logps"]["resident"]
    # and AdamW parked between updates: the log-prob pass and the rollout calls hold it no more
    adam = n * 8 / shard
    lean = program_memory(m, dataclasses.replace(parked, optimizer_resident=False), mesh,
                          program_shapes(c, parked, mesh, 1))
    for prog in ("logps", "decode", "append", "prefill"):
        assert off[prog]["resident"] - lean[prog]["resident"] == adam, prog
    for prog in ("grpo", "ofsd"):
        assert lean[prog]["resident"] == off[prog]["resident"] and lean[prog]["adam"] == adam, prog


def test_tiny_activations_kv_cache_and_logit_chunks():
    mesh = {"data": 1, "fsdp": 4, "tensor": 2}
    s = shape()
    seq = 32 + min(3 * 16, 160) + min(2 * 64, 160 - 48)  # prompt + sampled + observations
    assert s.seq_len == seq == 192
    mem = P.memory_plan(TINY, s, mesh)
    rows_dev = math.ceil(8 / 4)
    tokens = rows_dev * seq
    linear = (4 * 64 + 3 * 4 * 16 + 3 * 2 * 16 + 4 * 128) * 4       # fp32 compute
    keys = (128 * 128 + 64 * 192) / 192        # query blocks of 128 (attn_block): [0,128) sees 128 keys, [128,192) 192
    attention = 4 * keys * 6 / 2                                    # heads split over tensor=2
    assert mem["activations_no_remat"] == pytest.approx(2 * tokens * (linear + attention))
    assert mem["activations_remat"] == pytest.approx(2 * tokens * 64 * 4 + tokens * (linear + attention))
    # K and V, 2 layers, 16 rows, prompt + max_response slots, 2 kv heads x 16, fp32; batch / 4, heads / 2
    assert mem["kv_cache"] == 2 * 2 * 16 * (32 + 160) * 2 * 16 * 4 / (4 * 2)
    assert mem["grpo_logits_chunk"] == 128 * 512 * 4 * 3 / 2
    # gradient in the forward pass: 3 [chunk, V=512] fp32 + one [d, min(2048, V)] slice + the
    # [d, V] fp32 head-gradient accumulator, over tensor=2
    assert mem["ofsd_logits_chunk"] == (3 * 128 * 512 * 4 + 64 * 512 * 4 + 64 * 512 * 4) / 2


def test_step_time_from_flops_and_bandwidth():
    mesh = {"data": 1, "fsdp": 8, "tensor": 1}
    s = shape(fill=0.5)
    n = tiny_params_by_hand()
    t = P.time_plan(TINY, s, mesh, P.DEVICES["h100"], mfu=0.5, bw_util=1.0)
    seq, rows = s.seq_len, 16
    assert seq == 120  # <= attn_block (128): one dense square
    attn = 4 * 2 * 4 * 16 * seq * seq * rows
    head = 512 * 64  # V x d: the LM head runs at the 24 sampled tokens a row only (head_on_loss_tokens)
    assert s.sampled_tokens == int(0.5 * 3 * 16)
    body = (n - head) * rows * seq + head * rows * s.sampled_tokens
    train = 6 * body + 3 * attn + 2 * (2 * body + attn)
    assert t["train_tokens"] == rows * seq and t["train_flops"] == pytest.approx(train)
    every = P.time_plan(TINY, dataclasses.replace(s, head_on_loss_tokens=False), mesh, P.DEVICES["h100"])
    train_every = 6 * n * rows * seq + 3 * attn + 2 * (2 * n * rows * seq + attn)
    assert every["train_flops"] == pytest.approx(train_every)
    assert t["train_s"] == pytest.approx(train / (8 * 989e12 * 0.5))
    assert t["decode_steps"] == int(0.5 * 3 * 16)
    assert t["step_s"] == pytest.approx(t["rollout_s"] + t["train_s"])


def test_bad_mesh_and_device_speak_to_the_user():
    assert P.parse_mesh("fsdp:8,tensor:2") == {"data": 1, "fsdp": 8, "tensor": 2}
    with pytest.raises(ValueError, match="axis:size"):
        P.parse_mesh("fsdp=8")
    with pytest.raises(ValueError, match="--device"):
        P.plan(TINY, shape(), {"data": 1, "fsdp": 1, "tensor": 1}, "a100")


def test_cli_prints_the_qwen3b_plan():
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-m", "searche1_jax.plan", f"--config={root}/configs/qwen3b.py",
                          "--mesh=fsdp:8,tensor:1", "--device=h100"], cwd=root, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "3.086B" in out.stdout and "AdamW m+v fp32" in out.stdout and "time/step" in out.stdout
    assert "config.rollout.max_rows = 320; the planner picks 320" in out.stdout
    assert "WARNING: set --config.rollout.max_rows" not in out.stdout


def _picked(config: str, mesh: dict, device: str, processes: int) -> tuple:
    from searche1_jax.config import load_config_file
    from searche1_jax.program_plan import pick_rollout_rows
    c = load_config_file(config)
    m = P.model_config_for(c).replace(**model_overrides(c))
    run = P.run_shape_from_config(c)
    return c, m, run, pick_rollout_rows(c, m, run, mesh, device, processes)


# (config arg, mesh, device, processes): the slices configs/qwen3b.py names (launch/README.md)
SLICES = {"8xh100": ({"data": 1, "fsdp": 8, "tensor": 1}, "h100", 1),
          "16xh100": ({"data": 1, "fsdp": 16, "tensor": 1}, "h100", 2),
          "v4-32": ({"data": 1, "fsdp": 16, "tensor": 1}, "v4", 4),
          "v5e-64": ({"data": 1, "fsdp": 64, "tensor": 1}, "v5e", 16)}


@pytest.mark.parametrize("model", ["qwen3b", "qwen7b"])
@pytest.mark.parametrize("slice_", list(SLICES))
def test_the_qwen_configs_roll_out_in_the_chunk_the_planner_picks(model, slice_):
    """Each slice's rollout.max_rows is the planner's pick, and the run's startup check accepts it."""
    import os

    from searche1_jax.train.geometry import check_geometry
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    mesh, device, processes = SLICES[slice_]
    c, _, _, pick = _picked(f"{root}/configs/{model}.py:instruct,{slice_}", mesh, device, processes)
    if (model, slice_) == ("qwen3b", "16xh100"):  # also valid with one process a GPU (160 rows each)
        assert (c.rollout.max_rows, pick["max_rows"]) == (160, 320)
    else:
        assert c.rollout.max_rows == pick["max_rows"], (model, slice_, pick)
    check_geometry(c, mesh, processes)  # raises GeometryError if the chunk does not split the rows
    # every slice's rollout fits (7B on the TPU slices with its replica split over a host's chips)
    assert pick["fits"]


def test_the_picked_chunk_is_the_largest_valid_one_within_the_budget():
    """Brute force over every max_rows the startup check accepts: the pick fits the budget by the
    per-program estimate (less XLA:CPU's fp32 copy), and every larger accepted chunk does not."""
    import os

    from searche1_jax.program_plan import ROLLOUT_PROGRAMS, program_memory, program_shapes
    from searche1_jax.train.geometry import GeometryError, check_geometry
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    mesh, device, processes = SLICES["v4-32"]
    c, m, run, pick = _picked(f"{root}/configs/qwen3b.py:instruct,v4-32", mesh, device, processes)
    budget = P.DEVICES[device].budget_bytes

    def total(v):
        est = program_memory(m, run, mesh, program_shapes(c, run, mesh, processes, max_rows=v))
        return max(est[p]["program"] - est[p]["cpu_upcast"] + est[p]["resident"] for p in ROLLOUT_PROGRAMS)

    def accepted(v):
        c2 = c.copy_and_resolve_references()
        c2.rollout.max_rows = v
        try:
            check_geometry(c2, mesh, processes)
            return True
        except GeometryError:
            return False

    rows = c.grpo.questions_per_step * c.rollout.group_size // processes
    valid = [v for v in range(1, rows + 1) if accepted(v)]
    assert pick["max_rows"] in valid and total(pick["max_rows"]) <= budget
    assert all(total(v) > budget for v in valid if v > pick["max_rows"])
    assert pick["max_rows"] == 80 and 640 in valid  # 8 chunks of 16 questions a process


def test_a_run_whose_rollout_cannot_fit_is_told_so():
    """qwen7b on v5e-64 with a whole replica a chip (rollout.replica_tensor = 1): the smallest
    chunk (one group a chip) still exceeds a 16 GB chip; split over the host's 4 chips it fits."""
    import os

    from searche1_jax.config import load_config_file
    from searche1_jax.program_plan import pick_rollout_rows
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    mesh, device, processes = SLICES["v5e-64"]
    c = load_config_file(f"{root}/configs/qwen7b.py:instruct,v5e-64")
    assert c.rollout.replica_tensor == 4
    c.rollout.replica_tensor = 1
    m = P.model_config_for(c).replace(**model_overrides(c))
    pick = pick_rollout_rows(c, m, P.run_shape_from_config(c), mesh, device, processes)
    assert not pick["fits"] and pick["max_rows"] == 20
    assert min(pick["totals"].values()) > pick["budget"]
    # the replica's bytes a chip: the whole model in bf16, then a quarter of it
    from searche1_jax.program_plan import program_memory, program_shapes
    run = P.run_shape_from_config(c)
    whole = program_memory(m, run, mesh, program_shapes(c, run, mesh, processes))["decode"]["weights"]
    c.rollout.replica_tensor = 4
    split = program_memory(m, run, mesh, program_shapes(c, run, mesh, processes))["decode"]["weights"]
    assert whole == pytest.approx(m.num_params * 2) and split == pytest.approx(whole / 4)


def test_cli_refuses_a_mesh_that_cuts_the_query_heads():
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-m", "searche1_jax.plan", f"--config={root}/configs/qwen7b.py",
                          "--mesh=fsdp:2,tensor:8", "--device=h100"], cwd=root, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0
    assert "the 28 query heads (model.n_heads, logical axis 'heads') do not split over tensor = 8" in out.stderr


def test_micro_batch_that_does_not_divide_the_mesh_is_replicated():
    mesh = {"data": 1, "fsdp": 4, "tensor": 1}
    split = P.memory_plan(TINY, shape(micro_batch=8), mesh)
    repl = P.memory_plan(TINY, shape(micro_batch=6), mesh)
    assert split["act_tokens_per_device"] == 2 * 192 and split["micro_batch_replicated"] == 0
    assert repl["act_tokens_per_device"] == 6 * 192 and repl["micro_batch_replicated"] == 1
    t8 = P.time_plan(TINY, shape(micro_batch=8), mesh, P.DEVICES["v4"])
    t6 = P.time_plan(TINY, shape(micro_batch=6), mesh, P.DEVICES["v4"])
    assert t6["train_s"] == pytest.approx(4 * t8["train_s"])


def test_the_model_comes_from_the_config_never_its_file_name():
    from searche1_jax.config import base, from_config_dict
    c = base()
    c.model.architecture = "qwen2.5-7b"
    assert P.model_config_for(from_config_dict(c)) == get_preset("qwen2.5-7b")
    assert P.model_config_for(from_config_dict(c), "qwen2.5-3b") == get_preset("qwen2.5-3b")  # --model wins
    c.model.architecture = ""
    with pytest.raises(ValueError, match="set config.model.architecture to the preset whose shapes"):
        P.model_config_for(from_config_dict(c))
    c.model.preset, c.model.tokenizer = "tiny", "smollm2"
    assert P.model_config_for(from_config_dict(c)) == TINY


def test_cli_plans_a_renamed_config_by_its_architecture(tmp_path):
    import os
    import shutil
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    shutil.copy(os.path.join(root, "configs", "qwen3b.py"), tmp_path / "my_run.py")
    out = subprocess.run([sys.executable, "-m", "searche1_jax.plan", f"--config={tmp_path}/my_run.py",
                          "--mesh=fsdp:8,tensor:1", "--device=h100"], cwd=root, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "3.086B" in out.stdout
