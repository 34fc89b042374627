"""streamer.allocator: a CPU forward stops page-faulting its activations in again on every batch."""

import platform
import subprocess
import sys

import pytest

# ResNet-20 at batch 64 with a worker's small objects between batches; prints the median
# page faults per batch after the first (warm-up) batch
PROBE = """
import resource, statistics, sys, torch
from streamer.allocator import keep_freed_memory
from dynbn.models import CifarResNet
torch.set_num_threads(1)
if sys.argv[1] == "tuned":
    assert keep_freed_memory(), "mallopt refused"
model = CifarResNet(3).eval()
x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
faults = []
with torch.no_grad():
    for _ in range(8):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        model(x)
        messages = [{"camera": str(j), "payload": bytes(3072)} for j in range(64)]
        del messages
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(int(statistics.median(faults[1:])))
"""


def faults_per_batch(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, timeout=300)
    return int(out.stdout.strip())


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_forward_stops_faulting_its_activations_in():
    activations = 64 * 16 * 32 * 32 * 4 // 4096  # pages of one first-stage activation (4 MiB)
    assert faults_per_batch("default") > activations  # the probe sees the faults it is meant to remove
    assert faults_per_batch("tuned") < activations // 10
