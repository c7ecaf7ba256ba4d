"""Layers only point down: every import of `searche1_jax.*` in the package (module level or
inside a function) must be an edge of the ALLOWED table below. A new edge fails, naming the
file and the import; adding one is a decision made here, in review, not by accident.

Units are the top-level packages (model, rollout, retrieval, rl, data, train, eval, sweep) and
top-level modules (config, shapes, stats, hostmem, programs, main, plan, program_plan, aot, plot;
`config_*.py` modules are parts of the config unit). An allowed entry is a unit ("model") or a
dotted part of one ("train.checkpoint", "model.weight_map"): an import is allowed when the
imported module is that entry or lies inside it. Imports inside the importing unit are always
allowed.
"""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "searche1_jax"

# Bottom to top. The libraries (shapes, rl, data, model, rollout, retrieval) never import the
# experiment config, the trainer or the entry points.
ALLOWED = {
    "shapes": set(),                       # arithmetic on shapes: imports nothing of ours
    "stats": set(),                        # bootstrap intervals (numpy)
    "hostmem": set(),                      # glibc malloc settings (entry points) and trim (trainer)
    "programs": {"hostmem"},               # jit wrappers that keep only executables (free_programs)
    "rl": set(),                           # pure losses, rewards and OFSD data: arrays and strings
    "data": set(),                         # question files, benchmarks, demo assets
    "plot": set(),
    "model": {"shapes"},                   # never rollout/, train/, retrieval/
    "rollout": {"model", "programs", "shapes"},        # never rl/ (the protocol extracts answers), never train/
    "retrieval": {"model.weight_map", "shapes"},  # the encoder's weights are a weight-map table
    "config": {"data", "model", "retrieval", "rl", "rollout", "shapes"},  # typed experiment config
    "plan": {"config", "model", "rl", "shapes",
             "aot", "program_plan"},  # its CLI's --aot only (a function-level import): the table and a run
    "program_plan": {"plan", "rl", "shapes"},  # each compiled program's shapes and estimated bytes
    # plan --aot: compiles the real steps and rollout calls from abstract inputs
    "aot": {"config", "model", "plan", "program_plan", "rollout", "shapes", "train"},
    "train": {"config", "data", "hostmem", "model", "programs", "retrieval", "rl", "rollout", "shapes", "stats"},
    # inference only: a workdir's params (train.checkpoint); never the train state, steps or loop
    "eval": {"config", "data", "hostmem", "model", "retrieval", "rl", "rollout", "shapes", "stats",
             "train.checkpoint"},
    "sweep": {"config", "data", "hostmem", "model", "plot", "retrieval", "rl", "rollout", "shapes", "train"},
    "main": {"config", "data", "hostmem", "model", "plot", "retrieval", "rl", "rollout", "shapes", "train"},
    "__init__": set(),
}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        yield path, ".".join(parts), is_package


def unit_of(module: str) -> str:
    """searche1_jax.rl.ofsd -> rl; searche1_jax.plan -> plan; searche1_jax.config_sections ->
    config; searche1_jax -> __init__."""
    parts = module.split(".")
    if len(parts) < 2:
        return "__init__"
    return "config" if parts[1].startswith("config_") else parts[1]


def imports_of(path: pathlib.Path, module: str, is_package: bool):
    """(line, imported module) for every import of searche1_jax.* in the file, at any depth;
    relative imports are resolved; `from searche1_jax import x` yields searche1_jax.x."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "searche1_jax" or (node.level and not node.module):
                for alias in node.names:  # `from searche1_jax import shapes`: the submodule
                    yield node.lineno, f"{target}.{alias.name}"
            else:
                yield node.lineno, target


def is_allowed(src: str, target: str, allowed=ALLOWED) -> bool:
    inside = target.split(".")[1:]  # searche1_jax.train.checkpoint -> ["train", "checkpoint"]
    if not inside or unit_of(target) == src:
        return True
    if unit_of(target) == "config":
        inside = ["config"] + inside[1:]
    return any(inside[:len(e.split("."))] == e.split(".") for e in allowed.get(src, ()))


def edges():
    for path, module, is_package in _modules():
        src = unit_of(module)
        for line, target in imports_of(path, module, is_package):
            if target == "searche1_jax" or target.startswith("searche1_jax."):
                yield path, line, src, target


def test_every_unit_of_the_package_has_a_row():
    units = {unit_of(m) for _, m, _ in _modules()}
    missing = sorted(units - set(ALLOWED))
    assert not missing, (f"new top-level unit(s) {missing}: add a row to ALLOWED in {__file__} "
                         f"saying what each may import")


def test_imports_only_point_down():
    bad = [f"{p.relative_to(PACKAGE.parent)}:{line}: {src} imports {target}"
           for p, line, src, target in edges() if not is_allowed(src, target)]
    assert not bad, ("imports outside the allowed layer edges (tests/test_layers.py ALLOWED):\n  "
                     + "\n  ".join(bad))


@pytest.mark.parametrize("src,target,ok", [
    ("rl", "searche1_jax.rl.kl", True),
    ("rl", "searche1_jax.rollout.protocol", False),
    ("model", "searche1_jax.rollout.agent", False),
    ("rollout", "searche1_jax.rl.rewards", False),
    ("rollout", "searche1_jax.train.setup", False),
    ("retrieval", "searche1_jax.model.weight_map", True),
    ("retrieval", "searche1_jax.model.transformer", False),
    ("eval", "searche1_jax.train.checkpoint", True),
    ("eval", "searche1_jax.train.steps", False),
    ("eval", "searche1_jax.train.setup", False),
    ("eval", "searche1_jax.train", False),
    ("sweep", "searche1_jax.train.loop", True),
    ("model", "searche1_jax", True),
    ("config", "searche1_jax.config_sections", True),
    ("train", "searche1_jax.config_sections", True),
    ("rl", "searche1_jax.config_sections", False),
])
def test_the_rule_itself(src, target, ok):
    assert is_allowed(src, target) is ok


def test_imports_inside_functions_and_relative_imports_are_seen(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\n"
                 "def f():\n"
                 "    from searche1_jax.train.steps import make_steps\n"
                 "    from . import ofsd\n"
                 "    from ..model import config\n"
                 "    import searche1_jax.plan\n")
    got = list(imports_of(f, "searche1_jax.rl.x", is_package=False))
    assert got == [(1, "os"), (3, "searche1_jax.train.steps"), (4, "searche1_jax.rl.ofsd"),
                   (5, "searche1_jax.model"), (6, "searche1_jax.plan")]
