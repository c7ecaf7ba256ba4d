"""Render saved `plan --aot --json` reports as the markdown tables of docs/SCALING.md.

    python -m searche1_jax.plan --config=configs/qwen3b.py --mesh=fsdp:8 --aot --programs=grpo --json > a.json
    python -m searche1_jax.plan --config=configs/qwen3b.py --mesh=fsdp:8 --aot --programs=logps,decode --json > b.json
    python scripts/aot_tables.py a.json+b.json [c.json ...] > tables.md

Files joined by `+` are one table (the same config on the same mesh, its programs compiled in
separate runs: a long compile that dies keeps the others). XLA's numbers are read from the files;
the planner's estimate and the verdicts are recomputed with the current `program_plan`, so a
table never shows an older planner than the code's. Nothing is copied by hand.
"""
import json
import re
import sys

from searche1_jax.aot import markdown_aot, verdicts
from searche1_jax.model.config import ModelConfig
from searche1_jax.plan import DEVICES, RunShape
from searche1_jax.program_plan import PROGRAMS, ProgramShapes, program_memory


def merged(paths: list[str]) -> dict:
    reports = []
    for path in paths:
        with open(path) as f:
            reports.append(json.load(f))
    rep = dict(reports[0])
    for other in reports[1:]:
        for key in ("device", "mesh", "processes", "shapes", "run", "model"):
            if other[key] != rep[key]:
                raise ValueError(f"{paths}: the reports differ in {key}; join only runs of one config and mesh")
    xla = {name: r["programs"][name]["xla"] for r in reports for name in r["programs"]}
    xla = {name: xla[name] for name in PROGRAMS if name in xla}
    s = ProgramShapes(**rep["shapes"])
    estimate = program_memory(ModelConfig(**rep["model"]), RunShape(**rep["run"]), rep["mesh"], s)
    rep["programs"] = verdicts(xla, estimate, s, DEVICES[rep["device"]])
    rep["fits"] = all(r["fits"] for r in rep["programs"].values())
    rep["compile_s"] = sum(r["compile_s"] for r in reports)
    if len(reports) > 1:
        rep["command"] = re.sub(r" --programs=\S+", "", rep["command"]) + f" (programs compiled in {len(reports)} runs)"
    return rep


def main(args):
    for group in args:
        rep = merged(group.split("+"))
        print(markdown_aot(rep, rep.get("title", ""), rep.get("command", "")))
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
