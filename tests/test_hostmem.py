"""glibc malloc tuning (hostmem.py): applied on Linux glibc, a no-op elsewhere."""
import subprocess
import sys

import pytest

from searche1_jax import hostmem

# In a fresh process (a long-lived one may serve the block from free heap chunks either way):
# glibc's default raises the mmap threshold to the size of a freed mmapped block, so after
# freeing 8 MB a 1 MB block comes from the heap, which is never returned; tuned, it is mmapped.
PROBE = r"""
import ctypes, sys
from searche1_jax import hostmem
class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "tuned":
    assert hostmem.tune_malloc() and hostmem.tune_malloc()  # idempotent
libc.free(libc.malloc(8 << 20))
before = libc.mallinfo2().hblkhd
block = libc.malloc(1 << 20)
print(libc.mallinfo2().hblkhd - before)
"""


def _mmapped_growth(side: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, side], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_after_tune_malloc_a_large_free_does_not_move_blocks_into_the_heap():
    import ctypes
    if not hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2"):
        pytest.skip("glibc < 2.33 has no mallinfo2")
    assert _mmapped_growth("default") == 0            # the 1 MB block went to the heap
    assert _mmapped_growth("tuned") >= 1 << 20        # mmapped: unmapped when freed


def test_tune_malloc_is_a_no_op_off_linux(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert hostmem.tune_malloc() is False


# 100k blocks of 2 KiB freed below a block still in use: the free pages sit inside the heap,
# where the trim threshold (top of heap only) never reaches them; release() returns them.
HOLES = r"""
import ctypes, sys
from searche1_jax import hostmem
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
hostmem.tune_malloc()
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096
blocks = [libc.malloc(2048) for _ in range(100_000)]
for b in blocks:
    ctypes.memset(b, 1, 2048)
top = libc.malloc(2048)
for b in blocks:
    libc.free(b)
before = rss()
released = hostmem.release()
print(released, before - rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_release_returns_free_pages_inside_the_heap():
    out = subprocess.run([sys.executable, "-c", HOLES], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "True"
    assert int(out[1]) > 150 << 20   # of the ~200 MB freed


def test_release_is_a_no_op_off_linux(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert hostmem.release() is False


# 400 MB of touched pages: the resident set grows by them (the kernel's own count, read the way
# `ps` reads it), and the peak is at least the resident set (getrusage: what /usr/bin/time reports).
GROW = r"""
import numpy as np
from searche1_jax import hostmem
before = hostmem.rss_bytes()
block = np.ones(50_000_000)   # 400 MB, every page written
after = hostmem.rss_bytes()
m = hostmem.memory_metrics()
print(before, after, hostmem.peak_rss_bytes(), m["host_rss_gb"], m["host_peak_rss_gb"])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/statm is Linux's")
def test_resident_memory_counts_touched_pages_and_the_peak_holds_it():
    out = subprocess.run([sys.executable, "-c", GROW], capture_output=True, text=True, check=True)
    before, after, peak, rss_gb, peak_gb = (float(x) for x in out.stdout.split())
    assert 390e6 <= after - before <= 420e6
    assert peak >= after - 1e6   # the kernel updates the high-water mark lazily (by pages)
    assert abs(rss_gb * 1e9 - after) < 50e6 and peak_gb * 1e9 >= rss_gb * 1e9 - 1e6
