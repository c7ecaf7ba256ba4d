"""Checkpoint weight maps as tables: one row maps an HF tensor name to a Flax parameter path.

A row is `Rule(hf, path, transform)`. `hf` and `path` are templates whose `{name}` fields
match integers (layer indices), e.g.
    Rule("model.layers.{i}.mlp.up_proj.weight", "layers.{i}.mlp.up_proj.kernel", TRANSPOSE)
The same table drives import (HF -> Flax, `transform.to_flax`) and export (Flax -> HF,
`transform.to_hf`), so a round trip is exact by construction and tested once per family.
Adding a model family is adding rows.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterable, Mapping

import numpy as np

ArrayFn = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Transform:
    """A pair of inverse array maps between the HF layout and ours."""
    name: str
    to_flax: ArrayFn
    to_hf: ArrayFn


IDENTITY = Transform("identity", lambda x: x, lambda x: x)
# torch Linear stores [out, in]; our Linear kernels are [in, out].
TRANSPOSE = Transform("transpose", lambda x: np.ascontiguousarray(x.T), lambda x: np.ascontiguousarray(x.T))


@dataclasses.dataclass(frozen=True)
class Rule:
    hf: str
    path: str
    transform: Transform = IDENTITY
    optional: bool = False  # e.g. lm_head.weight absent when embeddings are tied


_FIELD = re.compile(r"\{(\w+)\}")


def _template_regex(template: str) -> re.Pattern:
    parts, last = [], 0
    for m in _FIELD.finditer(template):
        parts.append(re.escape(template[last:m.start()]))
        parts.append(f"(?P<{m.group(1)}>\\d+)")
        last = m.end()
    parts.append(re.escape(template[last:]))
    return re.compile("^" + "".join(parts) + "$")


def _match(name: str, rules: Iterable[Rule], side: str):
    for rule in rules:
        m = _template_regex(getattr(rule, side)).match(name)
        if m:
            return rule, {k: int(v) for k, v in m.groupdict().items()}
    return None, None


def hf_to_flax(tensors: Mapping[str, np.ndarray], rules: list[Rule], *,
               ignore: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """Map HF tensors to `{dotted flax path: array}`.

    Raises ValueError naming every HF tensor no rule matches (minus `ignore` regexes), so a
    new architecture fails loudly instead of silently dropping weights.
    """
    ignore_res = [re.compile(p) for p in ignore]
    out, unknown = {}, []
    for name, value in tensors.items():
        rule, fields = _match(name, rules, "hf")
        if rule is None:
            if not any(p.search(name) for p in ignore_res):
                unknown.append(name)
            continue
        out[rule.path.format(**fields)] = rule.transform.to_flax(np.asarray(value))
    if unknown:
        raise ValueError(
            f"{len(unknown)} checkpoint tensors match no row of the weight map, e.g. "
            f"{sorted(unknown)[:5]}; is this the right model family? Add rows to the table.")
    return out


def flax_to_hf(params: Mapping[str, np.ndarray], rules: list[Rule], *,
               skip: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """Inverse of `hf_to_flax`: `{dotted flax path: array}` -> `{hf name: array}`."""
    skip_res = [re.compile(p) for p in skip]
    out, unknown = {}, []
    for path, value in params.items():
        if any(p.search(path) for p in skip_res):
            continue
        rule, fields = _match(path, rules, "path")
        if rule is None:
            unknown.append(path)
            continue
        out[rule.hf.format(**fields)] = rule.transform.to_hf(np.asarray(value))
    if unknown:
        raise ValueError(f"{len(unknown)} parameters match no row of the weight map, e.g. "
                         f"{sorted(unknown)[:5]}")
    return out


def check_complete(found: Iterable[str], expected: Iterable[str], what: str) -> None:
    """Raise a ValueError listing the expected parameter paths the checkpoint did not provide."""
    missing = sorted(set(expected) - set(found))
    if missing:
        raise ValueError(f"{what}: {len(missing)} parameters missing from the checkpoint, "
                         f"e.g. {missing[:5]}")
