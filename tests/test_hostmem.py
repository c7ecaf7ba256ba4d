"""glibc malloc tuning (hostmem.py): applied on Linux glibc, a no-op elsewhere."""
import ctypes
import sys

import pytest

from searche1_jax import hostmem


class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_after_tune_malloc_a_large_free_does_not_move_blocks_into_the_heap():
    """glibc's default raises the mmap threshold to the size of a freed mmapped block, so after
    freeing 8 MB a 1 MB block comes from the heap (never returned). Tuned, it is mmapped."""
    libc = ctypes.CDLL("libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc < 2.33 has no mallinfo2")
    libc.mallinfo2.restype = Mallinfo2
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    assert hostmem.tune_malloc() is True
    libc.free(libc.malloc(8 << 20))
    before = libc.mallinfo2().hblkhd
    block = libc.malloc(1 << 20)
    try:
        assert libc.mallinfo2().hblkhd >= before + (1 << 20)  # mmapped, so unmapped on free
    finally:
        libc.free(block)
    assert hostmem.tune_malloc() is True  # idempotent


def test_tune_malloc_is_a_no_op_off_linux(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert hostmem.tune_malloc() is False
