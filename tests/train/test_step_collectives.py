"""The LM head and the OFSD KL keep the batch sharding: the compiled GRPO and OFSD steps on 8
fake devices move no vocabulary-sized buffer between devices inside a loop.

A chunked loss that flattens [B, T, d] loses the rows' sharding: XLA then all-reduces fp32
[chunk, V] logits (or a [d, V] head gradient) at every scan step, V = 151,936 at scale. The
oracle is XLA's own compiled program (HLO text): every all-reduce / all-gather / reduce-scatter
/ all-to-all reachable from a while loop's body must have no dimension of the vocabulary's size
(whole or split over up to 8 devices). One micro-batch per step, so the only loops are the
losses' own (XLA removes a one-trip loop)."""
import re

import jax
import numpy as np
import pytest

from searche1_jax.model.config import get_preset
from searche1_jax.model.create import create_model, flat_params, model_from_arrays
from searche1_jax.model.sharding import make_mesh, named_sharding
from searche1_jax.train.batching import to_micro
from searche1_jax.train.state import Binder, params_of
from searche1_jax.train.steps import StepConfig, hyper, make_steps
from tests.train.batches import random_grpo_batch
from tests.train.test_steps import ofsd_batch

VOCAB = 1000   # no other dimension of the tiny model or the batch has this size (or a divisor used)
CFG = get_preset("tiny").replace(vocab_size=VOCAB, n_layers=1)
HYPER = hyper(lr=1e-3, weight_decay=0.0, grad_clip=1.0, kl_coef=0.001, entropy_coef=0.001,
              temperature=1.0, ofsd_temperature=1.0)
COLLECTIVE = re.compile(r"\s(all-reduce|all-gather|reduce-scatter|all-to-all)(-start)?\(")
CALLED = re.compile(r"(?:body|condition|calls|to_apply|branch_computations)=\{?([^,}\s]+(?:,\s*%[^,}\s]+)*)")


def computations(hlo: str) -> dict[str, list[str]]:
    """{computation name: its instruction lines} of an HLO module's text."""
    out, name = {}, None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if head and not line.startswith(" "):
            name = head.group(1)
            out[name] = []
        elif name is not None and line.strip() and line.strip() != "}":
            out[name].append(line)
    return out


def in_loops(comps: dict[str, list[str]]) -> set[str]:
    """Names of the computations a while loop's body runs (directly or through calls)."""
    bodies = {m.group(1).lstrip("%") for lines in comps.values() for line in lines
              for m in re.finditer(r"body=%?([\w.\-]+)", line)}
    seen, todo = set(), list(bodies)
    while todo:
        c = todo.pop()
        if c in seen or c not in comps:
            continue
        seen.add(c)
        for line in comps[c]:
            for m in CALLED.finditer(line):
                todo.extend(n.strip().lstrip("%") for n in m.group(1).split(","))
    return seen


def vocab_collectives_in_loops(hlo: str) -> list[str]:
    sizes = {VOCAB // k for k in (1, 2, 4, 8)}
    comps = computations(hlo)
    bad = []
    for c in in_loops(comps):
        for line in comps[c]:
            m = COLLECTIVE.search(line)
            if not m:
                continue
            dims = {int(x) for shape in re.findall(r"\[([\d,]*)\]", line) for x in shape.split(",") if x}
            if dims & sizes:
                bad.append(line.strip()[:200])
    return bad


def vocab_dot_rows_in_loops(hlo: str) -> list[int]:
    """Tokens (the non-vocabulary dim) of each [tokens, V or V/k] logits dot in a loop body (the
    head gradient's [d, V] products left out)."""
    sizes = {VOCAB // k for k in (1, 2, 4, 8)}
    comps = computations(hlo)
    out = []
    for c in in_loops(comps) | {n for n in comps if n.startswith(("fused", "wrapped"))}:
        for line in comps[c]:
            m = re.search(r"=\s*f32\[(\d+),(\d+)\]\S*\s+dot\(", line)
            if m and int(m.group(2)) in sizes and int(m.group(1)) != CFG.d_model:
                out.append(int(m.group(1)))
    return out


@pytest.fixture(scope="module")
def model():
    return create_model(CFG, seed=0)


def sharded_inputs(model, mesh, batch):
    arrays = {k: np.asarray(v) for k, v in flat_params(model).items()}
    sharded = model_from_arrays(CFG, arrays, mesh=mesh)
    placed = {k: jax.device_put(v, named_sharding((None, "batch") + (None,) * (v.ndim - 2), v.shape, mesh))
              for k, v in batch.items()}
    return sharded, params_of(sharded), placed


MESHES = {"fsdp8": {"fsdp": 8}, "fsdp4_tensor2": {"fsdp": 4, "tensor": 2}}


def test_the_check_sees_a_vocab_all_reduce_in_a_loop():
    """The HLO reader itself: a scan whose body reduces [rows, V] logits across devices is caught."""
    mesh = make_mesh({"fsdp": 8})
    x = jax.device_put(np.ones((3, 8, 64), np.float32), named_sharding((None, None, "embed"), (3, 8, 64), mesh))
    w = np.ones((64, VOCAB), np.float32)

    def f(x):
        return jax.lax.scan(lambda c, xi: (c + (xi @ w).sum(0), None), np.zeros(VOCAB, np.float32), x)[0]

    assert vocab_collectives_in_loops(jax.jit(f).lower(x).compile().as_text())


@pytest.mark.parametrize("mesh_shape", list(MESHES))
def test_grpo_step_moves_no_vocab_sized_buffer_in_a_loop(model, mesh_shape):
    mesh = make_mesh(MESHES[mesh_shape])
    batch = random_grpo_batch(VOCAB, seed=0, rows=8, length=24)
    batch["old_logps"] = batch["ref_logps"] = np.zeros((8, 23), np.float32)
    sharded, params, placed = sharded_inputs(model, mesh, to_micro(batch, 8))
    steps = make_steps(Binder(sharded), StepConfig(grpo_chunk=16))
    hlo = steps.grpo.lower(params, steps.init(params, HYPER), placed, HYPER).compile().as_text()
    assert "while" in hlo, "the chunked log-prob scan should be a loop"
    assert vocab_collectives_in_loops(hlo) == []
    # each device computes logits for its own rows only: about `grpo_chunk` tokens a step, not
    # every row's chunk (replicated)
    rows = vocab_dot_rows_in_loops(hlo)
    assert rows and max(rows) <= 16, rows


@pytest.mark.parametrize("mesh_shape", list(MESHES))
def test_ofsd_step_moves_no_vocab_sized_buffer_in_a_loop(model, mesh_shape):
    mesh = make_mesh(MESHES[mesh_shape])
    sharded, params, placed = sharded_inputs(model, mesh, to_micro(ofsd_batch(rows=8), 8))
    teacher = params
    steps = make_steps(Binder(sharded), StepConfig(ofsd_chunk=8))
    hlo = steps.ofsd.lower(params, steps.init(params, HYPER), teacher, placed, HYPER).compile().as_text()
    assert "while" in hlo, "the chunked KL scan should be a loop"
    assert vocab_collectives_in_loops(hlo) == []
    rows = vocab_dot_rows_in_loops(hlo)
    assert rows and max(rows) <= 8, rows
