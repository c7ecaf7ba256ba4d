"""Checkpointer: a warm-start checkpoint holds no reference policy; restore follows what was saved;
a broken newest checkpoint falls back to the newest intact one."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from searche1_jax.train.checkpoint import Checkpointer
from searche1_jax.train.state import TrainState


def tree(scale: float) -> dict:
    return {"w": jnp.arange(6.0).reshape(2, 3) * scale, "b": {0: jnp.ones(3) * scale}}


REF = jax.tree.map(lambda x: x + 100.0, tree(1.0))  # a run's reference is fixed once it exists


def state(ref: bool, phase: str, scale: float = 1.0, reference=None) -> TrainState:
    params = tree(scale)
    opt = {"mu": jax.tree.map(jnp.zeros_like, params)}
    reference = reference if reference is not None else jax.tree.map(lambda x: x + 100.0, params)
    return TrainState(params, opt, reference if ref else None, 3,
                      jax.random.key(7), {"round": 0, "phase": phase, "round_step": 0, "sft_step": 2, "data": {}})


def test_a_state_without_reference_round_trips_whatever_the_template(tmp_path):
    ck = Checkpointer(str(tmp_path / "a"), async_save=False)
    ck.save(state(ref=False, phase="sft", scale=2.0), force=True)
    out = ck.restore_latest(state(ref=True, phase="grpo"))  # the template's reference is ignored
    assert out.ref_params is None and out.meta["phase"] == "sft" and "has_ref" not in out.meta
    np.testing.assert_array_equal(out.params["w"], np.arange(6.0).reshape(2, 3) * 2.0)
    ck.close()


def test_a_saved_reference_is_restored_onto_a_template_without_one(tmp_path):
    ck = Checkpointer(str(tmp_path / "b"), async_save=False)
    ck.save(state(ref=True, phase="grpo", scale=3.0), force=True)
    out = ck.restore_latest(state(ref=False, phase="sft"))
    np.testing.assert_array_equal(out.ref_params["w"], np.arange(6.0).reshape(2, 3) * 3.0 + 100.0)
    np.testing.assert_array_equal(out.ref_params["b"][0], np.full(3, 103.0))
    assert out.step == 3 and out.meta["phase"] == "grpo"
    ck.close()


# ---- issue 23 item 2: a broken newest checkpoint falls back to the newest intact one ----

def truncate_data(save_dir):
    """Halve the array data file of a save (what a kill mid-write or a full disk leaves): orbax
    merges each process's OCDBT files into state/d/ when it finalises a save."""
    (data,) = os.listdir(os.path.join(save_dir, "state", "d"))
    path = os.path.join(save_dir, "state", "d", data)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def empty_meta(save_dir):
    open(os.path.join(save_dir, "meta", "metadata"), "w").close()


def saved(tmp_path, n, keep=3):
    ck = Checkpointer(str(tmp_path / "c"), keep=keep, async_save=False)
    for s in range(1, n + 1):
        ck.save(state(ref=True, phase="grpo", scale=float(s), reference=REF), force=True)
    ck.close()
    return str(tmp_path / "c")


@pytest.mark.parametrize("damage", [truncate_data, empty_meta], ids=["truncated data file", "emptied meta file"])
def test_a_broken_latest_checkpoint_falls_back_to_the_newest_intact_one_and_is_kept(tmp_path, capsys, caplog,
                                                                                     damage):
    d = saved(tmp_path, 3)
    damage(f"{d}/2")
    before = sorted(os.listdir(f"{d}/2"))
    ck = Checkpointer(d, keep=3, async_save=False)
    out = ck.restore_latest(state(ref=True, phase="grpo"))
    np.testing.assert_array_equal(out.params["w"], np.arange(6.0).reshape(2, 3) * 2.0)  # save index 1
    lines = [x for x in capsys.readouterr().out.splitlines() if "unreadable" in x]
    assert len(lines) == 1 and f"checkpoint {d}/2 is unreadable" in lines[0] and f"kept as {d}/2.broken" in lines[0]
    assert not [r for r in caplog.records if r.name == "asyncio"]  # no traceback per failed array read
    assert sorted(os.listdir(f"{d}/2.broken")) == before  # moved aside whole, never deleted
    # later saves follow the restored one; keep-last-k never reaches the broken one
    for s in (4, 5, 6, 7):
        ck.save(state(ref=True, phase="grpo", scale=float(s), reference=REF), force=True)
    ck.close()
    assert os.path.isdir(f"{d}/2.broken") and ck.manager.all_steps() == [3, 4, 5]
    ck = Checkpointer(d, keep=3, async_save=False)
    again = ck.restore_latest(state(ref=True, phase="grpo"))
    np.testing.assert_array_equal(again.params["w"], np.arange(6.0).reshape(2, 3) * 7.0)
    assert "unreadable" not in capsys.readouterr().out
    ck.close()


def test_every_checkpoint_broken_is_refused_naming_them(tmp_path):
    d = saved(tmp_path, 2)
    empty_meta(f"{d}/0")
    truncate_data(f"{d}/1")
    ck = Checkpointer(d, keep=3, async_save=False)
    with pytest.raises(ValueError, match=rf"every checkpoint in {d} is unreadable \(kept as {d}/1.broken, "
                                         rf"{d}/0.broken\).*new --workdir"):
        ck.restore_latest(state(ref=True, phase="grpo"))


def test_params_only_restore_skips_a_broken_latest_without_moving_it(tmp_path):
    d = saved(tmp_path, 2)
    empty_meta(f"{d}/1")
    ck = Checkpointer(d, keep=3, async_save=False)
    like = jax.eval_shape(lambda: state(ref=False, phase="grpo").params)
    params, meta = ck.restore_latest_params(like)
    np.testing.assert_array_equal(params["w"], np.arange(6.0).reshape(2, 3))
    assert os.path.isdir(f"{d}/1") and not os.path.exists(f"{d}/1.broken")


_SAVE_MEMORY = r"""
import json, sys
import numpy as np, jax.numpy as jnp
from searche1_jax.train.checkpoint import Checkpointer
from searche1_jax.train.state import TrainState

def status(key):
    return int(open("/proc/self/status").read().split(key + ":")[1].split()[0]) * 1024

rng = np.random.default_rng(0)
params = {f"layer{i}": {"w": jnp.asarray(rng.random(5_000_000, dtype=np.float32))} for i in range(24)}  # 0.48 GB
import jax
st = TrainState(params=params, opt_state=(), ref_params=None, step=3, rng=jax.random.key(0), meta={"phase": "grpo"})
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM := VmRSS
before = status("VmRSS")
Checkpointer(sys.argv[1], async_save=False, concurrent_gb=float(sys.argv[2])).save(st)
print(json.dumps({"grew": status("VmHWM") - before, "state": 24 * 5_000_000 * 4}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc to reset VmHWM")
def test_a_save_holds_about_concurrent_gb_of_host_memory_beyond_the_state(tmp_path):
    """orbax keeps up to `concurrent_gb` of arrays in flight: at its default (96) a save of a
    0.48 GB state copies nearly all of it; at 0.05 GB the growth is a fraction of the state."""
    import json
    import subprocess
    import sys
    grew = {}
    for gb in (96.0, 0.05):
        out = subprocess.run([sys.executable, "-c", _SAVE_MEMORY, str(tmp_path / f"c{gb}"), str(gb)],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        r = json.loads(out.stdout.strip().splitlines()[-1])
        grew[gb] = r["grew"] / r["state"]
    assert grew[96.0] > 0.6, grew
    assert grew[0.05] < 0.4 and grew[0.05] < grew[96.0] / 2, grew
