"""``fleetkeeper serve`` caps glibc's malloc arenas: threads that allocate share two.

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
from reconciler.httpserver import limit_malloc_arenas
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
