"""Workdir paths that stay what the user gave: a local directory is made absolute, a URI
(`gs://bucket/run1`) stays a URI. Everything a run writes beside its checkpoints (metrics,
trajectory pages, dev answers, the write probe) goes through `etils.epath`, which serves local
files and bucket objects alike (orbax writes the checkpoints through it too); `os.path.abspath`
would turn `gs://b/run` into the local directory `$PWD/gs:/b/run`.
"""
from __future__ import annotations

import os

from etils import epath


def is_uri(path) -> bool:
    return "://" in str(path)


def workdir_path(path) -> epath.Path:
    """`path` as an epath.Path: absolute when local, unchanged when a URI."""
    return epath.Path(path) if is_uri(path) else epath.Path(os.path.abspath(os.fspath(path)))


def atomic_write_text(path: epath.Path, text: str) -> None:
    """Write `text` to a temporary sibling, then rename it over `path`: a reader (or a kill)
    never sees half a file. (A bucket's rename is a copy and a delete, still all or nothing.)"""
    tmp = path.parent / f".tmp-{os.getpid()}-{path.name}"
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


def append_text(path: epath.Path, text: str) -> None:
    """Append to a local file; a bucket object cannot be appended to, so it is rewritten whole
    (metrics files are a few MB at most)."""
    if not is_uri(path):
        with path.open("a") as f:
            f.write(text)
        return
    atomic_write_text(path, (path.read_text(encoding="utf-8") if path.exists() else "") + text)
