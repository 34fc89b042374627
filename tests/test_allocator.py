"""dynbn.allocator: after keep_freed_memory() a freed activation-sized block is reused, not page-faulted in again."""

import platform
import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from dynbn.allocator import keep_freed_memory
if sys.argv[1] == "tuned":
    assert keep_freed_memory(mmap_threshold=64 << 20), "mallopt refused"
faults = []
for i in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(40 << 18)  # 40 MiB of float32: above glibc's largest dynamic mmap threshold (32 MiB)
    junk = [str(j) for j in range(20_000)]  # small objects between batches, as a worker makes
    del x, junk
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(faults[1:]))
"""


def faults_per_batch(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    pages = (40 << 20) // 4096
    assert faults_per_batch("default") > pages // 2  # the probe sees the faults it is meant to remove
    assert faults_per_batch("tuned") < pages // 20
