"""Startup validation of every global batch size against the mesh and the process count (issue 20
item 5): a pure function of config + mesh shape + process count, so the real slices are checked
here without their devices. Expected values are worked out by hand in the comments."""
import os

import pytest

from searche1_jax.config import from_config_dict, load_config_file
from searche1_jax.shapes import nearest
from searche1_jax.train.geometry import GeometryError, check_geometry, mesh_shape

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MATRIX = [(8, 1), (16, 4), (64, 16)]  # 8xH100; v4-32 (4 hosts x 4 chips); v5e-64 (16 hosts x 4)


def config(name: str, arg: str = "", **overrides):
    c = load_config_file(os.path.join(ROOT, "configs", name) + (f":{arg}" if arg else ""))
    for field, value in overrides.items():
        section, key = field.split("__")
        setattr(getattr(c, section), key, value)
    return from_config_dict(c)


def check(c, devices: int, processes: int):
    return check_geometry(c, mesh_shape(c.mesh, devices), processes)


def test_mesh_shape_resolves_minus_one_and_refuses_a_mesh_that_does_not_fit():
    assert mesh_shape({"data": 1, "fsdp": -1, "tensor": 2}, 16) == {"data": 1, "fsdp": 8, "tensor": 2}
    assert mesh_shape({"data": 2, "fsdp": 4, "tensor": 1}, 8) == {"data": 2, "fsdp": 4, "tensor": 1}
    with pytest.raises(GeometryError, match="does not divide 12 devices"):
        mesh_shape({"data": 1, "fsdp": -1, "tensor": 8}, 12)
    with pytest.raises(GeometryError, match="needs 8 devices, have 16"):
        mesh_shape({"data": 2, "fsdp": 4, "tensor": 1}, 16)


def test_nearest_valid_values_below_and_above():
    assert nearest(8, lambda v: v % 16 == 0 and 256 % v == 0, 256) == [16]       # none below 8
    assert nearest(510, lambda v: v % 4 == 0, 1024) == [508, 512]
    assert nearest(12, lambda v: v % 8 == 0 and 32 % v == 0, 32) == [8, 16]
    assert nearest(5, lambda v: False, 100) == []


@pytest.mark.parametrize("name", ["qwen3b.py", "qwen7b.py"])
@pytest.mark.parametrize("devices,processes", MATRIX)
def test_the_8xh100_config_fits_8_devices_and_names_both_micro_batches_elsewhere(name, devices, processes):
    c = config(name)  # default slice 8xh100: GRPO and OFSD micro-batches 8
    if devices == 8:
        g = check(c, devices, processes)
        assert (g.batch_devices, g.rollout_devices) == (8, 8)
        return
    with pytest.raises(GeometryError) as e:
        check(c, devices, processes)
    msg = str(e.value)
    # 8 rows over 16 (64) devices: a multiple of lcm(16, 4) = 16 (lcm(64, 16) = 64) dividing
    # the mini-batch 256 (GRPO) or 64 (OFSD): 16 (64), nothing below 8
    want = {16: 16, 64: 64}[devices]
    assert f"config.grpo.micro_batch = 8: rows a forward/backward must be a multiple of data x fsdp = {devices}" in msg
    assert f"config.ofsd.micro_batch = 8: rows a forward/backward must be a multiple of data x fsdp = {devices}" in msg
    assert msg.count(f"nearest valid: {want}\n") + msg.endswith(f"nearest valid: {want}") == 2
    assert "replicated compute" in msg and f"x {processes} processes" in msg
    # the global counts split evenly: 512 questions, 256 / 64 trajectories over 4 or 16 processes
    assert "questions_per_step" not in msg and "mini_batch =" not in msg
    # qwen3b's 8xh100 rollout chunk (320 rows) is more than a process's 160 rows on 16 processes
    # (qwen7b's 80 divides them)
    named = processes == 16 and name == "qwen3b.py"
    assert ("config.rollout.max_rows = 320" in msg) == named
    if named:
        assert "decodes (160, 160); nearest valid: 160" in msg


@pytest.mark.parametrize("name", ["qwen3b.py", "qwen7b.py"])
@pytest.mark.parametrize("arg,devices,processes", [("instruct", 8, 1), ("base,8xh100", 8, 1),
                                                   ("instruct,16xh100", 16, 2), ("instruct,16xh100", 16, 16),
                                                   ("instruct,v4-32", 16, 4), ("base,v5e-64", 64, 16)])
def test_the_shipped_configs_fit_their_documented_slices(name, arg, devices, processes):
    c = config(name, arg)
    g = check(c, devices, processes)
    assert c.grpo.micro_batch == c.ofsd.micro_batch == devices  # one trajectory a device
    # rows a process decodes in one GRPO step: 512 / P questions x 5, split over its devices
    rows = 512 // processes * 5
    assert rows % g.rollout_devices == 0


def test_every_field_is_checked_with_its_reason_and_nearest_values():
    c = config("tiny.py", grpo__questions_per_step=6, grpo__mini_batch=8, grpo__micro_batch=4,
               rollout__group_size=4, ofsd__questions=6, ofsd__mini_batch=6, ofsd__micro_batch=2,
               sft__enabled=True, sft__batch=6, sft__micro_batch=2, sft__contexts="x")
    with pytest.raises(GeometryError) as e:
        check(c, 16, 4)  # 4 processes x 4 devices, fsdp 16
    lines = str(e.value).splitlines()
    assert lines[0] == "batch sizes do not fit mesh data:1,fsdp:16,tensor:1 (16 devices) x 4 processes:"
    got = {line.split(" = ")[0].strip(): line for line in lines[1:]}
    # 6 questions over 4 processes: 4 or 8; the mini-batch 8 splits (8 / 4 = 2)
    assert got["config.grpo.questions_per_step"].endswith(
        "questions a step must split evenly over 4 processes; nearest valid: 4 or 8")
    assert "config.grpo.mini_batch" not in got
    # micro 4 over fsdp 16: multiples of 16 dividing 8 — none
    assert got["config.grpo.micro_batch"].endswith(
        "no value fits: config.grpo.mini_batch (8) must be a multiple of 16 too")
    # OFSD: 6 questions -> 4 or 8; 6 students an update -> multiples of 4 that micro 2 divides: 4 or 8
    assert got["config.ofsd.questions"].endswith("nearest valid: 4 or 8")
    assert got["config.ofsd.mini_batch"].endswith("nearest valid: 4 or 8")
    assert "config.sft.batch" in got and "config.sft.micro_batch" in got
    assert "config.rollout.max_rows" not in got  # its phases are not split yet: reported above


def test_a_rollout_chunk_must_be_whole_groups_over_the_devices_and_divide_the_rows():
    # one process, 8 devices: 8 questions x G=4 = 32 rows a step (and an OFSD round)
    kw = dict(grpo__questions_per_step=8, grpo__mini_batch=32, grpo__micro_batch=8, rollout__group_size=4,
              ofsd__questions=8, ofsd__group_size=4, ofsd__mini_batch=8, ofsd__micro_batch=8)
    check(config("tiny.py", rollout__max_rows=16, **kw), 8, 1)   # 2 chunks of 16 rows, 2 a device
    check(config("tiny.py", rollout__max_rows=0, **kw), 8, 1)    # 32 rows at once
    with pytest.raises(GeometryError) as e:  # 12 rows (3 groups) cannot split over 8 devices
        check(config("tiny.py", rollout__max_rows=12, **kw), 8, 1)
    assert "config.rollout.max_rows = 12: a rollout chunk must be whole groups (4, 4), a multiple of the 8 " \
           "devices a process rolls out on, and divide each phase's rows a process decodes (32, 32); " \
           "nearest valid: 8 or 16" in str(e.value)
    # all at once: 6 questions x 4 = 24 rows over 16 devices do not split; chunks of 16 do not divide 24
    kw.update(grpo__questions_per_step=6, grpo__mini_batch=24, ofsd__questions=6, ofsd__mini_batch=8)
    with pytest.raises(GeometryError, match=r"config.rollout.max_rows = 0: 24 rows a process decodes at once "
                                            r"\(config.grpo.questions_per_step / 1 processes x group size\); "
                                            r"24 rows .* cannot be split over the 16 devices .*"
                                            r"no value fits: change the questions"):
        check(config("tiny.py", rollout__max_rows=0, **kw), 16, 1)


def test_tensor_devices_share_rows_and_several_processes_roll_out_on_their_own_devices():
    c = config("tiny.py", grpo__micro_batch=4, ofsd__micro_batch=4, ofsd__mini_batch=4)
    g = check_geometry(c, {"data": 1, "fsdp": 4, "tensor": 2}, 1)  # rows over fsdp 4 only
    assert (g.devices, g.batch_devices, g.rollout_devices) == (8, 4, 4)
    c = config("tiny.py", grpo__micro_batch=8, ofsd__micro_batch=8, ofsd__mini_batch=8)
    g = check_geometry(c, {"data": 1, "fsdp": 8, "tensor": 1}, 2)
    assert g.rollout_devices == 4  # each process decodes its 2 x 4 = 8 rows on its 4 devices


def test_an_experiment_refuses_replicated_compute_before_building_anything(monkeypatch):
    """On the tests' 8 fake devices, configs/tiny.py's micro-batch 4 would run replicated."""
    from searche1_jax.train import setup
    monkeypatch.setattr(setup.Tokenizer, "load", lambda *a, **k: pytest.fail("built the tokenizer"))
    c = load_config_file(os.path.join(ROOT, "configs", "tiny.py"))
    with pytest.raises(GeometryError, match=r"config.grpo.micro_batch = 4: .*data x fsdp = 8 devices.*"
                                            r"nearest valid: 8"):
        setup.Experiment(c)



def test_a_replica_split_that_does_not_divide_a_process_s_devices_is_refused():
    c = config("qwen7b.py", "instruct,v5e-64", rollout__replica_tensor=3)
    with pytest.raises(GeometryError) as e:
        check(c, 64, 16)
    assert "config.rollout.replica_tensor = 3: it must divide the 4 devices a process rolls out on; " \
           "nearest valid: 2 or 4" in str(e.value)
    g = check(config("qwen7b.py", "instruct,v5e-64"), 64, 16)  # the config's 4: rows over 1 device a process
    assert (g.replica_tensor, g.rollout_devices) == (4, 1)
