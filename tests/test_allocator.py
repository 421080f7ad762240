"""agents/allocator.py: glibc's thresholds raised, so a large freed block is reused from the
heap instead of being mapped anew; and the config key that switches it."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from agents.allocator import MAX_THRESHOLD_MB, raise_malloc_thresholds
from agents.run_config import build_run_config
from envs.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import ctypes, sys
import numpy as np
from agents.allocator import raise_malloc_thresholds

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "raised":
    assert raise_malloc_thresholds(64)
before = libc.mallinfo2().hblkhd
block = np.ones(40 * 2**20, dtype=np.uint8)  # 40 MiB: above glibc's largest own threshold
print(libc.mallinfo2().hblkhd - before)
"""


def _mapped_bytes(mode: str) -> int:
    """Bytes glibc holds in mmap'ed blocks after a 40 MiB allocation, in a fresh process."""
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, check=True,
                         capture_output=True, text=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_a_large_block_comes_from_the_heap_once_the_thresholds_are_raised():
    assert _mapped_bytes("default") >= 40 * 2**20  # glibc maps it on its own
    assert _mapped_bytes("raised") == 0


@pytest.mark.parametrize("value", [0, -1, MAX_THRESHOLD_MB + 1, 1.5, True])
def test_a_threshold_out_of_range_is_refused(value):
    with pytest.raises(ValueError, match=rf"allowed: an integer number of MiB in \[1, "
                                         rf"{MAX_THRESHOLD_MB}\]"):
        raise_malloc_thresholds(value)


@pytest.mark.parametrize("value", [-1, MAX_THRESHOLD_MB + 1])
def test_the_config_key_is_checked(value):
    with pytest.raises(ConfigError, match="malloc_threshold_mb"):
        build_run_config({"algo": "mappo", "train": {"malloc_threshold_mb": value}})
