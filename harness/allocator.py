"""The C allocator's settings for training on a CPU.

glibc's malloc serves each block over a moving threshold (128 KiB, rising with what is freed, up
to 32 MiB) with a fresh mmap, and gives the top of its heap back to the OS once twice that
threshold lies free. A language-model step allocates and frees tensors of tens of MiB (the logits
and their gradients: 28 MiB at batch 20, 35 steps, 10,000 words), so depending on the order of
earlier allocations a step faults their pages in again, or does not. Three models trained in
turn at hidden 200 (2-core Xeon): 5,300-10,200 page faults and 61-67 ms per step with glibc's
defaults, none and 59-61 ms with freed memory kept. In `dropbench bench` the `none` variant
(oneDNN's kernel, like the baseline) read 0.97x the baseline without it and 1.00x with it.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>


def keep_freed_memory() -> bool:
    """Blocks up to 1 GiB come from the heap, and the heap is not trimmed. Returns whether the C
    library took the settings (False where it is not glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
