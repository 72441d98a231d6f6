"""Stop glibc from handing large freed blocks back to the operating system.

Every inner step allocates and frees the same activation tensors (tens of MB at 84x84). By
default glibc serves blocks that large with fresh mmap()s and unmaps them on free, so each
step pays a page fault for every 4 KiB it touches again: on a 2-core machine about a fifth of
a 5-way 5-shot episode went to the kernel. Serving them from the heap and never trimming it
keeps the pages mapped; the process holds its peak memory until it exits, which suits
one-job-per-process training and evaluation. Numbers are unchanged (only where memory comes from).
"""

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt() parameters, from glibc's <malloc.h>


def keep_freed_memory():
    """Returns True when the allocator was reconfigured (Linux with glibc), else False."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (e.g. musl): leave the allocator alone
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))
