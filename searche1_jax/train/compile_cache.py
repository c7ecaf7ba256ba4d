"""JAX's persistent compilation cache, set from config.train.compilation_cache_dir (issue 20 item 7).

    use_compilation_cache(cache_dir(c.train.compilation_cache_dir, workdir))   # main.py, before any jit

A preempted run that resumes, or a second run of the same shapes, compiles the same executables
again: the train steps and every rollout bucket (decode, append, prefill: `Experiment.compile_count`),
minutes for a 3B model on an accelerator. With a cache directory, XLA writes each executable that
took at least `jax_persistent_cache_min_compile_time_secs` (JAX's default: 1 s) to compile, and
the next process start loads it instead of compiling. The key covers the program, the devices,
the compile options and the jax version, so a stale entry is never used, only missed.
"""
from __future__ import annotations

import jax

from searche1_jax.train.paths import is_uri, workdir_path


def cache_dir(setting: str, workdir: str) -> str | None:
    """config.train.compilation_cache_dir -> the directory for JAX: "" -> None (no cache); a
    relative path lies under the workdir (one cache per run, found again when it resumes); an
    absolute path or a URI (gs://...) is used as it is (runs share it)."""
    if not setting:
        return None
    if is_uri(setting) or setting.startswith("/"):
        return setting
    return str(workdir_path(workdir) / setting)


def use_compilation_cache(path: str | None) -> None:
    """Point JAX at `path` (None: leave the cache off). Call before the first compile: the cache
    is opened once, at the first compilation that could use it."""
    if path is not None:
        jax.config.update("jax_compilation_cache_dir", path)
