"""`speed.keep_freed_memory`: glibc keeps large freed blocks for reuse instead of unmapping them (process-wide, so
each case runs in a fresh interpreter)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
from helpers import GLIBC_PROBE_PRELUDE, env_without_malloc_settings

PROBE = (
    GLIBC_PROBE_PRELUDE
    + """
from textinv import speed

applied = speed.keep_freed_memory() if sys.argv[1] == "apply" else False
before = libc.mallinfo2()
block = libc.malloc(64 << 20)
during = libc.mallinfo2()
libc.free(ctypes.c_void_p(block))
after = libc.mallinfo2()
# mmapped bytes while the 64 MiB block lives; heap bytes kept (not trimmed) after it is freed
print(applied, during.hblkhd - before.hblkhd, after.arena - before.arena)
"""
)

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's allocator only (Linux)"
)


def _probe(apply: bool = True, **env_extra) -> tuple[bool, int, int]:
    env = env_without_malloc_settings(**env_extra)
    cmd = [sys.executable, "-c", PROBE, "apply" if apply else "skip"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    applied, mapped, kept = out.stdout.split()
    return applied == "True", int(mapped), int(kept)


def test_large_blocks_stay_on_the_heap_after_free():
    applied, mapped, kept = _probe()
    assert applied
    assert mapped == 0  # no mmap of its own for the 64 MiB block ...
    assert kept >= 63 << 20  # ... and the heap keeps it after free (less what free space it had), for the next step


def test_without_it_glibc_maps_and_unmaps_large_blocks():
    """The control: what every step paid before (and what the probe above would see if the setting broke)."""
    _, mapped, kept = _probe(apply=False)
    assert mapped >= 64 << 20 and kept < 64 << 20


def test_a_users_own_malloc_settings_win():
    applied, mapped, _ = _probe(MALLOC_MMAP_THRESHOLD_=str(1 << 20))
    assert not applied and mapped >= 64 << 20


def test_a_users_own_glibc_malloc_tunables_win():
    applied, mapped, _ = _probe(GLIBC_TUNABLES="glibc.malloc.mmap_threshold=1048576")
    assert not applied and mapped >= 64 << 20


RELEASE_PROBE = (
    GLIBC_PROBE_PRELUDE
    + """
from textinv import speed

def anon_kb():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("RssAnon:"))

assert speed.keep_freed_memory()
block = libc.malloc(64 << 20)
ctypes.memset(block, 1, 64 << 20)  # resident
libc.free(ctypes.c_void_p(block))
kept = anon_kb()
released = speed.release_freed_memory() if sys.argv[1] == "release" else False
print(released, kept - anon_kb())
"""
)


@pytest.mark.parametrize("release", [True, False])
def test_release_freed_memory_gives_the_kept_pages_back(release):
    """After the JAX backend's start-up (weights read, step compiled) the kept heap is given back once: the
    64 MiB a freed block left resident go, where without the call they stay."""
    env = env_without_malloc_settings()
    cmd = [sys.executable, "-c", RELEASE_PROBE, "release" if release else "keep"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    released, dropped_kb = out.stdout.split()
    if release:
        assert released == "True" and int(dropped_kb) >= 60 << 10
    else:
        assert int(dropped_kb) < 4 << 10
