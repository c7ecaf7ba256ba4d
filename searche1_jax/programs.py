"""Compiled programs that keep only their executables (config.train.free_programs).

A `jax.jit` function keeps, beside each executable, the trace and the lowered module it was
compiled from, so that a later call with new static arguments can reuse them. On XLA:CPU that
is as much host memory again as the executable: measured on the demo's warm-start step
(SmolLM2-135M, 30 unrolled layers), 0.25 GB of executable and 0.31 GB of caches beside it.
`LeanJit` wraps a jitted function: with `set_lean(True)` it compiles each argument signature
ahead of time (`lower(...).compile()`, which reads and writes the persistent compilation cache
as a jit call does), empties the jit's own caches, and calls the executable; otherwise it is the
jitted function. Numbers are the same either way (the same program); donation is the jit's.
"""
from __future__ import annotations

from typing import Callable

import jax

from searche1_jax.hostmem import release

_LEAN = False


def set_lean(on: bool) -> None:
    """Process-wide, like jax's own caches: `Trainer` sets it from config.train.free_programs."""
    global _LEAN
    _LEAN = bool(on)


def lean() -> bool:
    return _LEAN


class LeanJit:
    """`jitted` (a `jax.jit` of a function with these static arguments), called through one
    ahead-of-time executable per argument signature when `lean()`."""

    def __init__(self, jitted: Callable, *, static_argnums: tuple[int, ...] = (),
                 static_argnames: tuple[str, ...] = ()):
        self.jitted = jitted
        self.static_argnums, self.static_argnames = tuple(static_argnums), tuple(static_argnames)
        self._executables: dict = {}

    def __call__(self, *args, **kw):
        if not _LEAN:
            return self.jitted(*args, **kw)
        dyn = tuple(a for i, a in enumerate(args) if i not in self.static_argnums)
        dyn_kw = {k: v for k, v in kw.items() if k not in self.static_argnames}
        leaves, tree = jax.tree.flatten((dyn, dyn_kw))
        key = (tuple(args[i] for i in self.static_argnums),
               tuple(sorted((k, v) for k, v in kw.items() if k in self.static_argnames)), tree,
               tuple((jax.typeof(x), x.sharding if isinstance(x, jax.Array) else None) for x in leaves))
        executable = self._executables.get(key)
        if executable is None:
            executable = self.jitted.lower(*args, **kw).compile()
            self.jitted.clear_cache()  # the trace and lowering it kept: not needed to run it
            # and the compiler's freed heap, before the program's own temporaries join it (the
            # demo's first warm-start step: 0.44 GB above the second one's start without this)
            release()
            self._executables[key] = executable
        return executable(*dyn, **dyn_kw)

    def lower(self, *args, **kw):
        return self.jitted.lower(*args, **kw)

    def clear_cache(self) -> None:
        self._executables.clear()
        self.jitted.clear_cache()

    def _cache_size(self) -> int:
        """Executables held (the lean ones and the jit's)."""
        return len(self._executables) + self.jitted._cache_size()
