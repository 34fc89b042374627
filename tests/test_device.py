"""The device: one parser of ``--device`` (``dynbn.device``) behind every command and worker, the options of the
commands that take it, the frame loader, ``--precision``, and bench/gpu.py's CPU smoke run; with CUDA, every arm
on the GPU as on the CPU."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dynbn.bn.table import BNTable, current_stats, fingerprint
from dynbn.cli import build_parser, main
from dynbn.detector import Detector
from dynbn.device import FrameLoader, autocast, device_help, full_precision, resolve_device
from dynbn.methods import build_method
from dynbn.models import architecture
from dynbn.open_set import fit_open_set
from dynbn.spectrum import to_tensor
from stand_in import stand_in

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def no_cuda(monkeypatch):
    """torch sees no CUDA device, whatever the machine has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def test_resolve_device_parses_every_form(monkeypatch):
    assert resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [resolve_device(s) for s in ("auto", "cuda", "cuda:0", "cuda:1")] == ["cuda", "cuda", "cuda:0", "cuda:1"]
    with pytest.raises(ValueError, match=r"--device cuda:2: this machine has 2 CUDA device\(s\)"):
        resolve_device("cuda:2")
    for bad in ("gpu", "CUDA", "cuda:", "cuda:x", "cuda:-1", "", "mps"):
        with pytest.raises(ValueError, match="use auto, cpu, cuda or cuda:N"):
            resolve_device(bad)


def test_cuda_without_cuda_is_an_error_naming_the_option(no_cuda):
    assert resolve_device("auto") == "cpu"
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match=f"--device {spec}: torch sees no CUDA device here"):
            resolve_device(spec)


def test_the_service_uses_the_library_parser(monkeypatch):
    """One implementation: the workers' ``resolve_device`` is the library's, and STREAMER_DEVICE reaches it."""
    import streamer.lifecycle
    from streamer.settings import StreamerSettings

    assert streamer.lifecycle.resolve_device is resolve_device
    assert StreamerSettings().device == "auto"
    monkeypatch.setenv("STREAMER_DEVICE", "cuda:1")
    assert StreamerSettings().device == "cuda:1"


def _sub(parser, *names):
    for name in names:
        parser = next(a for a in parser._actions if a.dest in ("command", "action")).choices[name]
    return parser


def test_commands_take_device_with_one_help_text():
    parser = build_parser()
    for command, default in ((["reproduce"], "cpu"), (["stream-bench"], "cpu"), (["scenario", "run"], "auto"),
                             (["serve"], None)):
        option = next(a for a in _sub(parser, *command)._actions if a.dest == "device")
        assert option.default == default, command
        assert option.help == device_help(default or "auto"), command
    assert device_help("auto") == "auto (default), cpu, cuda or cuda:N"
    assert device_help("cpu") == "cpu (default), auto, cuda or cuda:N"
    assert parser.parse_args(["reproduce", "--device", "cpu", "--out", "o"]).device == "cpu"
    assert parser.parse_args(["stream-bench", "--device", "cpu", "--out", "o"]).device == "cpu"
    assert parser.parse_args(["scenario", "run", "--device", "cpu", "--out", "o"]).device == "cpu"


@pytest.mark.parametrize("command", [["reproduce"], ["stream-bench"], ["scenario", "run"]])
def test_cli_refuses_cuda_without_cuda_before_any_work(command, no_cuda, tmp_path, capsys):
    out = tmp_path / "o"
    assert main([*command, "--device", "cuda", "--out", str(out)]) == 2
    assert "--device cuda: torch sees no CUDA device here" in capsys.readouterr().err
    assert not out.exists()


def test_table_moves_to_a_device_as_a_new_table():
    model = architecture("resnet20")
    table = BNTable(fingerprint(model), {"clean": current_stats(model)}, {"k": "v"})
    moved = table.to("cpu")
    assert moved is not table and moved.meta == table.meta and moved.layers == table.layers
    assert all(moved.stats["clean"][k] is v for k, v in table.stats["clean"].items())  # already there: shared


def test_frame_loader_gives_the_stacked_batch_from_one_reused_buffer():
    """The worker's way onto the device: bit for bit ``to_tensor(np.stack(frames))``, batched or one by one;
    the buffer is reused (a batch does not change when the next one is loaded) and grows for a larger batch."""
    g = np.random.default_rng(0)
    frames = [g.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(80)]
    loader = FrameLoader((32, 32, 3), "cpu", capacity=64)
    assert not loader.pinned and loader.capacity == 64  # on the CPU: a plain buffer
    buffer = loader._buffers[0].data_ptr()
    first = loader.load(frames[:50])
    assert torch.equal(first, to_tensor(np.stack(frames[:50])))
    second = loader.load(frames[50:])
    assert loader._buffers[0].data_ptr() == buffer  # reused
    assert torch.equal(first, to_tensor(np.stack(frames[:50])))  # the earlier batch is its own copy
    one_by_one = torch.cat([loader.load([f]) for f in frames[50:]])
    assert torch.equal(second, one_by_one) and torch.equal(second, to_tensor(np.stack(frames[50:])))
    everything = loader.load(frames)
    assert loader.capacity == 80 and torch.equal(everything, to_tensor(np.stack(frames)))


def test_frame_loader_names_the_frame_it_refuses():
    loader = FrameLoader((32, 32, 3))
    good = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match=r"frame 1 is uint8 \(31, 32, 3\); this loader takes uint8 \(32, 32, 3\)"):
        loader.load([good, np.zeros((31, 32, 3), np.uint8)])
    with pytest.raises(ValueError, match=r"frame 0 is float32 \(32, 32, 3\)"):
        loader.load([good.astype(np.float32)])
    with pytest.raises(ValueError, match="frames are H x W x 3"):
        FrameLoader((32, 32))
    assert torch.equal(loader.load([good]), torch.zeros(1, 3, 32, 32))  # and it goes on


def test_precision_runs_the_classifier_in_bf16_and_keeps_the_detector_and_statistics_float32(resnet20, frames):
    """Under ``--precision bf16`` the model's activations are bf16, the detector's outputs are exactly the
    float32 ones (so the vote sees the same evidence) and most classes stay the same."""
    with pytest.raises(ValueError, match="precision 'fp64': use fp32, bf16, fp16"):
        autocast("cpu", "fp64")
    table, detector = stand_in(resnet20)
    arm = build_method("dynbn_vote", resnet20, table=table, detector=detector)
    x, cams = frames[:64], [f"cam{i % 4}" for i in range(64)]
    reference = detector.read(x, severity=True)
    with torch.no_grad(), autocast("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu")
        with full_precision(x):
            assert not torch.is_autocast_enabled("cpu")
        read = detector.read(x, severity=True)
        low = arm(x, cams)
    assert all(torch.equal(a, b) for a, b in zip(read[::2], reference[::2]))
    arm.reset()
    with torch.no_grad():
        full = arm(x, cams)
    assert low.dtype == torch.bfloat16 and full.dtype == torch.float32
    assert (low.argmax(1) == full.argmax(1)).float().mean() >= 0.9


def test_commands_take_precision():
    parser = build_parser()
    for command in (["stream-bench"], ["serve"], ["scenario", "run"]):
        option = next(a for a in _sub(parser, *command)._actions if a.dest == "precision")
        assert option.choices == ("fp32", "bf16", "fp16"), command
    assert parser.parse_args(["stream-bench", "--precision", "bf16", "--out", "o"]).precision == "bf16"
    with pytest.raises(SystemExit):
        parser.parse_args(["stream-bench", "--precision", "fp64", "--out", "o"])


def test_the_workers_take_precision_from_the_environment(monkeypatch):
    from pydantic import ValidationError

    from streamer.serve import ServeSettings
    from streamer.settings import StreamerSettings

    assert StreamerSettings().precision == "fp32"
    monkeypatch.setenv("STREAMER_PRECISION", "bf16")
    assert StreamerSettings().precision == "bf16" and ServeSettings(bundle="b").precision == "bf16"
    monkeypatch.setenv("STREAMER_PRECISION", "half")
    with pytest.raises(ValidationError, match="precision"):
        StreamerSettings()


def test_gpu_bench_quick_smoke_run_on_the_cpu(tmp_path, data_dir):
    """bench/gpu.py --quick --device cpu: every section runs and the JSON holds what a GPU run will (~15 s)."""
    out = tmp_path / "gpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DYNBN_DATA": str(data_dir)}
    done = subprocess.run([sys.executable, str(ROOT / "bench/gpu.py"), "--quick", "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["device"] == "cpu" and r["torch"] == torch.__version__ and "cuda" in r
    assert {(row["batch_size"], row["precision"]) for row in r["inprocess"]} == {(8, "fp32"), (8, "bf16"),
                                                                                 (16, "fp32"), (16, "bf16")}
    assert all(row["model"] == "resnet20" and row["source_fps"] > 0 and row["dynbn_vote_fps"] > 0 for row in r["inprocess"])
    assert len(r["stages"]) == 4 and all(s["forward_ms"] > 0 and s["detector_ms"] > 0 for s in r["stages"])
    [run] = r["e2e"]
    assert run["workers"] == 1 and run["e2e_fps"] > 0 and run["worker_devices"] == ["cpu"]
    assert run["exactly_once"] and run["results"] == run["frames"] and run["duplicated"] == run["missing"] == 0
    assert r["skipped"] == [] and r["errors"] == []


# -- with CUDA: what the GPU session checks besides bench/gpu.py --------------------------------------------

def _stand_in(model) -> tuple[BNTable, Detector]:
    """The stand-in table and detector (tests/stand_in.py), the detector with open-set statistics."""
    table, detector = stand_in(model)
    detector.train()  # the open-set statistics of a detector as it leaves training (dropout on)
    g = torch.Generator().manual_seed(0)
    fit_open_set(detector, torch.rand(48, 3, 32, 32, generator=g), torch.arange(16).repeat(3),
                 torch.rand(16, 3, 32, 32, generator=g))
    return table, detector.eval()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_every_arm_runs_on_cuda_as_on_the_cpu():
    """stream-bench's arms (``make_arms`` moves the model, detector and table) on two batches: no tensor left on
    the wrong device, finite logits, and mostly the CPU's classes (cuDNN's arithmetic differs a little)."""
    from dynbn.experiments.stream_bench import BenchConfig, make_arms

    torch.manual_seed(0)
    model = architecture("resnet20").eval()
    table, detector = _stand_in(model)
    g = torch.Generator().manual_seed(1)
    batches = [torch.rand(16, 3, 32, 32, generator=g) for _ in range(2)]
    cams, truth = [f"cam{i % 3}" for i in range(16)], ["fog"] * 16
    classes = {}
    for device in ("cpu", "cuda"):
        cfg = BenchConfig(device=device)
        arms = make_arms(cfg, copy.deepcopy(model), table, copy.deepcopy(detector))
        for name, arm in arms.items():
            logits = [arm(x.to(device), cams, truth) for x in batches]
            assert all(t.device.type == device and bool(torch.isfinite(t).all()) for t in logits), name
            classes[device, name] = torch.cat([t.argmax(1).cpu() for t in logits])
    for name in arms:
        same = (classes["cpu", name] == classes["cuda", name]).float().mean().item()
        assert same >= 0.75, (name, same)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_frame_loader_on_cuda_uses_two_pinned_buffers_and_gives_the_cpu_batch():
    """On CUDA the buffers are pinned and taken in turn; every batch equals the CPU conversion, also when the
    next batch is written while the previous copy may still run."""
    g = np.random.default_rng(1)
    loader = FrameLoader((32, 32, 3), "cuda", capacity=16)
    assert loader.pinned and len(loader._buffers) == 2 and all(b.is_pinned() for b in loader._buffers)
    batches = [[g.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(16)] for _ in range(5)]
    out = [loader.load(frames) for frames in batches]  # no synchronisation in between
    for frames, x in zip(batches, out):
        assert x.device.type == "cuda" and torch.equal(x.cpu(), to_tensor(np.stack(frames)))
