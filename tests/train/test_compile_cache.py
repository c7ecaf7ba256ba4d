"""config.train.compilation_cache_dir: where the cache lies, and a second process start loads
what the first one compiled (JAX's persistent compilation cache on CPU)."""
import json
import os
import subprocess
import sys

from searche1_jax.train.compile_cache import cache_dir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# one process start, as main.py does it: the cache set before the first jit. JAX's 1 s threshold
# is lowered to 0 so that this small program is written at all.
START = """
import json, sys
import jax
from searche1_jax.train.compile_cache import cache_dir, use_compilation_cache
events = []
jax.monitoring.register_event_listener(lambda event, **_: events.append(event))
use_compilation_cache(cache_dir("xla_cache", sys.argv[1]))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
out = jax.jit(lambda x: (x @ x.T).sum() * 3)(jax.numpy.ones((16, 16)))
print(json.dumps({"value": float(out), "hits": events.count("/jax/compilation_cache/cache_hits"),
                  "misses": events.count("/jax/compilation_cache/cache_misses")}))
"""


def test_cache_dir_is_off_under_the_workdir_or_as_given(tmp_path):
    assert cache_dir("", str(tmp_path)) is None
    assert cache_dir("xla_cache", str(tmp_path)) == str(tmp_path / "xla_cache")
    assert cache_dir("/shared/xla", str(tmp_path)) == "/shared/xla"
    assert cache_dir("gs://bucket/xla", str(tmp_path)) == "gs://bucket/xla"
    assert cache_dir("xla_cache", "gs://bucket/run1") == "gs://bucket/run1/xla_cache"


def test_a_second_process_start_loads_the_executables_the_first_compiled(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")

    def start():
        out = subprocess.run([sys.executable, "-c", START, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    first = start()
    assert first["misses"] >= 1 and first["hits"] == 0, first
    assert os.listdir(tmp_path / "xla_cache")  # populated under the workdir
    second = start()
    assert second["hits"] >= 1 and second["misses"] == 0, second
    assert second["value"] == first["value"] == 16 * 16 * 16 * 3
