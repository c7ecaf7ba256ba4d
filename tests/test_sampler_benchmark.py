"""benchmarks/sampler.py agent's options: --policy (a training run's params) and --calls (a timed
log of the engine's device calls)."""
from __future__ import annotations

import importlib.util
import os
import sys
import types

import jax
import numpy as np
import pytest

from searche1_jax.model.config import get_preset
from searche1_jax.model.create import create_model, flat_params
from searche1_jax.rollout.sampler import SamplingParams
from searche1_jax.train.state import flatten
from tests.eval.test_policy import save_run
from tests.rollout.test_engine import QUESTIONS, SAMPLED, make_agent, steer, tok  # noqa: F401  (fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))  # it imports its sibling `common`
    try:
        spec = importlib.util.spec_from_file_location("sampler_bench", os.path.join(ROOT, "benchmarks", "sampler.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(os.path.join(ROOT, "benchmarks"))
    return mod


def tiny_config():
    """The fields of a config that name the policy's architecture (as configs/*.py set them)."""
    return types.SimpleNamespace(model=types.SimpleNamespace(preset="tiny", checkpoint="", dtype="float32",
                                                             param_dtype="float32", remat=False, scan_layers=False))


def test_policy_option_loads_the_latest_checkpoint_of_a_run(bench, tmp_path):
    cfg = get_preset("tiny")
    want = flatten(save_run(str(tmp_path / "run"), cfg))  # two saves; the latest is shifted by 1
    fake_tok = types.SimpleNamespace(vocab_size=cfg.vocab_size)
    for path in (tmp_path / "run", tmp_path / "run" / "checkpoints"):  # the workdir or its checkpoints/
        got = flat_params(bench.load_policy(tiny_config(), fake_tok, str(path)))
        assert set(got) == set(want)
        for k in want:
            np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=k)


def test_policy_option_refuses_a_bad_path_by_name(bench, tmp_path):
    fake_tok = types.SimpleNamespace(vocab_size=get_preset("tiny").vocab_size)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/missing does not exist"):
        bench.load_policy(tiny_config(), fake_tok, str(tmp_path / "missing"))
    os.makedirs(tmp_path / "notes")
    with pytest.raises(FileNotFoundError, match="no checkpoints/ directory"):
        bench.load_policy(tiny_config(), fake_tok, str(tmp_path / "notes"))
    save_run(str(tmp_path / "other"), get_preset("tiny", mlp_dim=96), saves=1)
    with pytest.raises(ValueError, match="written by a different model"):
        bench.load_policy(tiny_config(), fake_tok, str(tmp_path / "other"))
    with pytest.raises(ValueError, match="--policy must name"):
        bench.load_policy(tiny_config(), fake_tok, "")


@pytest.mark.parametrize("engine", ["packed", "padded"])
def test_call_log_counts_what_the_engine_counts(bench, tok, engine):  # noqa: F811
    """The call log's decode calls, rows x steps and appends against the engine's own counters."""
    model = create_model(get_preset("tiny", vocab_size=tok.vocab_size), seed=3)
    policy = steer(model, tok, SAMPLED, 1.0)
    questions = [q for q in QUESTIONS for _ in range(3)]
    agent = make_agent(tok, engine)
    log = bench.CallLog()
    try:
        log.on = True
        agent.run(policy, questions, jax.random.key(4), SamplingParams(temperature=1.0))
    finally:
        log.close()
    stats = agent.take_stats()
    decodes = [c for c in log.calls if c[0] == "decode"]
    assert len(decodes) == stats.decode_calls
    assert sum(rows * steps for _, rows, _, _, steps, _ in decodes) == stats.row_steps
    assert len(log.calls) - len(decodes) == stats.append_calls
    assert sum(c[5] for c in log.calls) <= stats.decode_s + stats.append_s
    lines = log.table()
    assert len(lines) == 2 + len({c[:4] for c in log.calls})
    assert sum(int(line.split("|")[5]) for line in lines[2:]) == len(log.calls)
    from searche1_jax.rollout import engine as engine_module
    assert engine_module.decode is log.saved["decode"]  # closed: the engine's own functions again
