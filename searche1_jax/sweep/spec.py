"""The sweep command line: `"seed=0,1,2,3;train.lr=1e-6,3e-6"` -> populations of members.

Fields are `section.name` config paths (`seed` and `lr` are short for `train.seed` and
`train.lr`; any other bare name that is unique in the config works too). Values are cast to
the type of the config field. The cross product of all fields is split in two:

- population fields change only numbers inside the compiled step (or host-side sampling),
  so their members share one vmapped step (`population.py`);
- structural fields (anything else: model preset, group size, batch geometry, OFSD
  rendering, ...) change shapes or code, so each value is a separate population, run one
  after another.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
from typing import Any, Sequence

import ml_collections

from searche1_jax.train.setup import POPULATION_FIELDS, check_population_field, config_fields  # noqa: F401

ALIASES = {"seed": "train.seed", "lr": "train.lr"}

# fields the trainer never reads for training: sweeping them would produce identical members
UNUSED_FIELDS = {
    "data.dev": "the dev file is not a hyper-parameter",
    "log.tensorboard": "logging does not change training",
    "log.trajectory_groups": "logging does not change training",
    "checkpoint.keep": "checkpointing does not change training",
    "checkpoint.every_steps": "checkpointing does not change training",
    "checkpoint.async_save": "checkpointing does not change training",
}


@dataclasses.dataclass(frozen=True)
class Axis:
    field: str              # "train.lr"
    values: tuple


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    population: tuple[Axis, ...]
    structural: tuple[Axis, ...]

    def populations(self) -> list[dict[str, Any]]:
        """One {field: value} per structural combination ([{}] when there is none)."""
        return _product(self.structural)

    def members(self) -> list[dict[str, Any]]:
        """One {field: value} per population member ([{}] when there is none)."""
        return _product(self.population)


def _product(axes: Sequence[Axis]) -> list[dict[str, Any]]:
    return [dict(zip([a.field for a in axes], vals)) for vals in itertools.product(*[a.values for a in axes])]


def resolve_field(name: str, fields: dict[str, Any]) -> str:
    if name in fields:
        return name
    if name in ALIASES:
        return ALIASES[name]
    bare = [f for f in fields if f.rsplit(".", 1)[-1] == name]
    if len(bare) == 1:
        return bare[0]
    if len(bare) > 1:
        raise ValueError(f"sweep field {name!r} is ambiguous: write one of {sorted(bare)}")
    close = closest_field(name, list(fields) + list(ALIASES))
    hint = f"; did you mean {close!r}?" if close else ""
    raise ValueError(f"sweep field {name!r} is not a config field{hint}")


def closest_field(name: str, candidates: list[str]) -> str | None:
    """An abbreviation in the same section first (learning_rate -> lr), then spelling."""
    section, _, last = name.rpartition(".")
    initials = "".join(w[0] for w in last.split("_") if w)
    for f in candidates:
        f_section, _, f_last = f.rpartition(".")
        if f_section == section and len(f_last) > 1 and f_last in (initials, last.replace("_", "")):
            return f
    same = [f for f in candidates if f.rpartition(".")[0] == section] if section else []
    close = difflib.get_close_matches(name, same or candidates, n=1, cutoff=0.5)
    return close[0] if close else None


def cast_value(field: str, text: str, like: Any):
    """`text` as the type of the config field's current value `like` (an unset field, None,
    takes the type the typed config declares for it, e.g. ofsd.lr: float)."""
    text = text.strip()
    if like is None:
        from searche1_jax.config import field_type
        like = field_type(field)()
    kind = type(like).__name__
    try:
        if isinstance(like, bool):
            low = text.lower()
            if low not in ("true", "false", "1", "0"):
                raise ValueError
            return low in ("true", "1")
        if isinstance(like, int):
            return int(text)
        if isinstance(like, float):
            return float(text)
        if isinstance(like, str):
            return text
    except ValueError:
        raise ValueError(f"sweep field {field} takes {kind} values, got {text!r}") from None
    raise ValueError(f"sweep field {field} is a {kind} and cannot be swept")


def parse_sweep(spec: str, config: ml_collections.ConfigDict) -> list[Axis]:
    """`"a=1,2;b.c=x,y"` -> [Axis("train.a", (1, 2)), ...] checked against `config`."""
    fields = config_fields(config)
    axes, seen = [], set()
    for part in (p.strip() for p in spec.split(";")):
        if not part:
            continue
        if "=" not in part:
            raise ValueError(f"sweep part {part!r} must look like field=v1,v2,...")
        name, _, values = part.partition("=")
        field = resolve_field(name.strip(), fields)
        if field in UNUSED_FIELDS:
            raise ValueError(f"sweep field {field} cannot be swept: {UNUSED_FIELDS[field]}")
        if field in seen:
            raise ValueError(f"sweep field {field} appears twice")
        seen.add(field)
        items = [v.strip() for v in values.split(",")]
        if not values.strip() or any(not v for v in items):
            raise ValueError(f"sweep field {field} has an empty value in {values!r}; give v1,v2,...")
        vals = tuple(cast_value(field, v, fields[field]) for v in items)
        if len(set(vals)) != len(vals):
            raise ValueError(f"sweep field {field} repeats a value: {values!r}")
        axes.append(Axis(field, vals))
    if not axes:
        raise ValueError("the sweep is empty; give --sweep='field=v1,v2;field2=...'")
    return axes


def plan_sweep(axes: Sequence[Axis], population: str | Sequence[str] = "auto",
               config: ml_collections.ConfigDict | None = None) -> SweepPlan:
    """Split axes into population and structural ones.

    population="auto": every POPULATION_FIELDS axis is vmapped, the rest are structural.
    Otherwise the named fields (list or comma string) form the population; naming a field
    that changes shapes or compiled code is refused.
    """
    if population == "auto":
        chosen = {a.field for a in axes if a.field in POPULATION_FIELDS}
    else:
        names = population.split(",") if isinstance(population, str) else list(population)
        fields = config_fields(config) if config is not None else {a.field: None for a in axes}
        chosen = {resolve_field(n.strip(), fields) for n in names if n.strip()}
        swept = {a.field for a in axes}
        for f in sorted(chosen):
            if f not in swept:
                raise ValueError(f"population field {f} is not in the sweep")
            check_population_field(f)
    return SweepPlan(tuple(a for a in axes if a.field in chosen), tuple(a for a in axes if a.field not in chosen))






def with_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
    c = copy.deepcopy(config)
    for field, value in overrides.items():
        section, name = field.rsplit(".", 1)
        c[section][name] = value if not isinstance(c[section][name], float) else float(value)
    return c


def describe(overrides: dict[str, Any]) -> str:
    """`seed=0 lr=1e-06` (aliases shortened) for tables and legends."""
    short = {v: k for k, v in ALIASES.items()}
    return " ".join(f"{short.get(f, f)}={v:g}" if isinstance(v, float) else f"{short.get(f, f)}={v}"
                    for f, v in overrides.items()) or "base"
