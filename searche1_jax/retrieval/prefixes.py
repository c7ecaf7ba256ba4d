"""Query/passage prefixes of a dense encoder, named by its checkpoint (no jax: the CLIs import it).

    resolve_prefixes("auto", "/models/e5-base-v2")   # ("query: ", "passage: ")
    resolve_prefixes("none", d), ("e5", d), ("Q: |P: ", d), (("q ", "p "), d)
"""
from __future__ import annotations

import json
import os
import re

# (query prefix, passage prefix) presets. e5 models were trained with these prefixes (e5 paper,
# Search-R1's retriever); sentence-transformers models such as all-MiniLM-L6-v2 use none.
PREFIXES = {"e5": ("query: ", "passage: "), "none": ("", "")}
PREFIX_CHOICES = "'auto' (from the checkpoint), 'e5', 'none', or 'QUERY_PREFIX|PASSAGE_PREFIX'"
# An e5-family name: "e5" as a whole token ("intfloat/e5-base-v2", "multilingual-e5-large"), the
# test Search-R1's server applies to its --retriever_name ("e5" in the name).
_E5_NAME = re.compile(r"(?<![a-z0-9])e5(?![a-z0-9])", re.IGNORECASE)


def detect_prefixes(directory: str) -> tuple[tuple[str, str], str]:
    """((query prefix, passage prefix), why) for a HF checkpoint directory.

    In order: sentence-transformers' `prompts` {"query", "passage"|"document"} in
    config_sentence_transformers.json (the checkpoint states them); an e5-family name in
    config.json's `_name_or_path`, the directory's name or a hub cache folder
    (`models--intfloat--e5-base-v2`): e5's "query: " / "passage: "; otherwise none."""
    st = os.path.join(directory, "config_sentence_transformers.json")
    if os.path.exists(st):
        with open(st) as f:
            prompts = json.load(f).get("prompts") or {}
        if "query" in prompts and ("passage" in prompts or "document" in prompts):
            return (prompts["query"], prompts.get("passage", prompts.get("document"))), f"prompts in {st}"
    names = [os.path.basename(os.path.normpath(directory))]
    names += [p for p in os.path.normpath(os.path.abspath(directory)).split(os.sep) if p.startswith("models--")]
    cfg = os.path.join(directory, "config.json")
    if os.path.exists(cfg):
        with open(cfg) as f:
            names.insert(0, str(json.load(f).get("_name_or_path", "")))
    for name in names:
        if _E5_NAME.search(name):
            return PREFIXES["e5"], f"e5-family name {name!r}"
    return PREFIXES["none"], "no prompts in the checkpoint and no e5-family name"


def resolve_prefixes(prefixes: str | tuple[str, str], directory: str) -> tuple[str, str]:
    """A --prefixes value (see PREFIX_CHOICES) or a (query, passage) pair -> the pair."""
    if isinstance(prefixes, (tuple, list)) and len(prefixes) == 2 and all(isinstance(p, str) for p in prefixes):
        return tuple(prefixes)
    if not isinstance(prefixes, str):
        raise ValueError(f"prefixes must be {PREFIX_CHOICES} or a (query, passage) pair, got {prefixes!r}")
    if prefixes == "auto":
        return detect_prefixes(directory)[0]
    if prefixes in PREFIXES:
        return PREFIXES[prefixes]
    if prefixes.count("|") == 1:
        q, p = prefixes.split("|")
        return q, p
    raise ValueError(f"prefixes must be one of {PREFIX_CHOICES}, got {prefixes!r}; e.g. "
                     f"--prefixes 'query: |passage: '")
