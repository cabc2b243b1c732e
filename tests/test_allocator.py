"""dropbench keeps freed memory in the process (`harness/allocator.py`): big blocks come from the
heap, and freeing them does not hand the heap back to the OS."""

import ctypes
import sys

import pytest

from dropbench.harness.allocator import keep_freed_memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")


def test_a_64_mib_block_comes_from_the_heap_and_stays_there_after_free():
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.sbrk.restype = ctypes.c_void_p, ctypes.c_void_p
    libc.malloc.argtypes, libc.free.argtypes, libc.sbrk.argtypes = [ctypes.c_size_t], [ctypes.c_void_p], [ctypes.c_ssize_t]
    assert keep_freed_memory()
    block = libc.malloc(64 * 2**20)  # glibc's default serves it with its own mmap: above 32 MiB, always
    ctypes.memset(block, 1, 64 * 2**20)
    heap_end = libc.sbrk(0)
    assert block < heap_end, "the block was mapped outside the heap"
    libc.free(block)
    assert libc.sbrk(0) == heap_end, "freeing the block trimmed the heap"


def test_every_dropbench_command_keeps_freed_memory(monkeypatch, tmp_path):
    from dropbench.harness import cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(True))
    cli.main(["data", "verify", "--data-dir", str(tmp_path)])
    assert calls == [True]
