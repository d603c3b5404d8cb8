"""``fleetkeeper serve`` and glibc's heap: its arenas capped at two, freed memory given back.

A real child process (the cap is per process and must come before its threads), eight
threads allocating outside pymalloc, and glibc's own ``malloc_info`` report counting
the heaps; without the cap each thread gets an arena of its own.
"""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = r"""
import ctypes, sys, threading
from reconciler.heap import limit_malloc_arenas
if sys.argv[1] == "capped":
    assert limit_malloc_arenas()
keep = []
start = threading.Barrier(8)
def work():
    start.wait()  # all alive at once: none can inherit a finished thread's arena
    keep.extend(b"x" * 4000 for _ in range(200))  # over 512 bytes: glibc's malloc
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
fp = libc.fopen(sys.argv[2].encode(), b"w")
assert libc.malloc_info(0, fp) == 0
libc.fclose(fp)
"""


def heaps(tmp_path: Path, mode: str) -> int:
    out = tmp_path / f"{mode}.xml"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("MALLOC_ARENA_MAX", None)
    subprocess.run([sys.executable, "-c", CHILD, mode, str(out)], check=True, env=env)
    return out.read_text().count("<heap nr=")


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" or not hasattr(ctypes.CDLL(None), "malloc_info"),
    reason="malloc arenas are glibc's",
)
def test_serve_caps_malloc_arenas_at_two(tmp_path: Path) -> None:
    default, capped = heaps(tmp_path, "default"), heaps(tmp_path, "capped")
    assert default > 2, f"without the cap only {default} heaps: the test shows nothing"
    assert capped <= 2, f"{capped} heaps with the cap"


TRIM_CHILD = r"""
import sys
from reconciler.heap import HeapTrimmer, free_heap_bytes
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
trimmer = HeapTrimmer()
assert not trimmer.check()  # nothing freed yet
blocks = [bytes(4000) + bytes([i % 256]) for i in range(12_000)]  # 48 MB over 512 bytes
pinned = blocks[::50]  # what a server keeps of a rollout: the heap cannot shrink from the top
del blocks
before = rss()
assert free_heap_bytes() > trimmer.slack
assert trimmer.check(), "40+ MB free and no trim"
after = rss()
assert not trimmer.check()  # trimmed: due again only when as much more is freed
print(before - after)
"""


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" or not hasattr(ctypes.CDLL(None), "mallinfo2"),
    reason="malloc_trim and mallinfo2 are glibc's (2.33+)",
)
def test_freed_heap_in_the_middle_is_given_back() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-c", TRIM_CHILD], check=True, env=env, capture_output=True, text=True
    )
    given_back = int(out.stdout)
    assert given_back > 30 * 1024 * 1024, f"RSS fell by only {given_back} bytes"
