"""Test-wide environment: 8 fake CPU devices for sharding tests, fp32 matmuls, quiet logs, and
one persistent XLA compilation cache for the whole session.

Set before jax is imported by any test module. The cache lies in a fresh temporary directory
(removed at the end): tests that run the same program, in this process or in the `main` runs
they start as subprocesses (a run, then its resume), read it back instead of compiling it
again. Its key covers the program, devices and options, so it changes no result; the compile
counts tests assert are jit cache sizes, which it does not change. Tests of the cache itself
set their own directory. JAX_COMPILATION_CACHE_DIR= (empty) turns it off.
"""
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("OPENBLAS_CORETYPE", "Haswell")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_XLA_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _XLA_CACHE = tempfile.mkdtemp(prefix="searche1-tests-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def pytest_sessionfinish(session, exitstatus):
    if _XLA_CACHE is not None:
        shutil.rmtree(_XLA_CACHE, ignore_errors=True)
