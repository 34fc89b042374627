"""GPU throughput of the deployed arm: in process per model, batch and precision, per stage, and end to end.

One command on a machine with one GPU (sized for an H100: well under 8 minutes):

    python bench/gpu.py --out bench/results/gpu.json

Sections, in this order; the JSON is rewritten after each, so a run cut short keeps what it measured:

1. ``inprocess``: frames/s of the ``source`` and ``dynbn_vote`` arms (``dynbn.methods.build_method``) on
   frames already on the device, for ResNet-20 (32 px: ``build_model("resnet20")``, the shipped checkpoint
   when the data directory has it, else the same network with random weights, which cost the same) and
   torchvision ResNet-50 (224 px, random weights: ``build_model("tv:resnet50", input_size=224)``), at
   batch 64, 256 and 1024, in fp32 and in bf16 (``dynbn.device.autocast``, as ``--precision bf16``). ``dynbn_vote`` reads a stand-in BN
   table (the model's own statistics, variances scaled a little per entry: one entry per domain and per
   (corruption, severity)) and an untrained detector with a severity head: the shapes and the code path
   of a bundle ``dynbn fit`` writes, whose fitted values would not change the cost. 16 cameras, their
   frames interleaved. bf16 rows also give the share of frames whose class is the fp32 class.
2. ``stages``: dynbn_vote's time per batch, split as ``DynBNVote.forward`` runs it, with the device
   synchronised between the steps: the worker's ``FrameLoader`` (the uint8 frames into its pinned buffer,
   one copy to the device, the conversion to float there), spectrum + detector, the vote (on the host), the
   model's forward with per-frame statistics. Medians over a few batches.
3. ``e2e``: 1, 2 and 4 scenario workers (``python -m streamer.worker`` with ``STREAMER_DEVICE``, the
   service itself) on a private redis-server (no persistence), fed by publisher processes once the
   workers have joined; ResNet-20 with the stand-in table and detector. ``e2e_fps``: frames/s while every
   worker is producing (``steady_fps`` of bench/stream_throughput.py); ``publish_fps``: how fast the
   publishers sent (when the two are close, the publishers were the limit); ``exactly_once``: every
   published frame has one result, none lost, none duplicated, no dead letters.

``--budget-s`` (default 420): once spent, the remaining measurements are skipped and listed under
``skipped``; an end-to-end run never waits past it. ``--quick``: tiny sizes (batches 8 and 16, ResNet-20
only, one worker), the CPU smoke test of tests/test_device.py. ``--device``: auto (default), cpu, cuda
or cuda:N.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the project; tests/redis_server.py (as stream_throughput.py)
from redis_server import RedisServer  # noqa: E402
from stand_in import stand_in  # noqa: E402
from stream_throughput import join, send, start_workers, steady_fps, worker_env  # noqa: E402

from dynbn import data  # noqa: E402
from dynbn.device import FrameLoader, autocast, device_help, resolve_device, synchronize  # noqa: E402
from dynbn.domains import DEFAULT_DOMAINS  # noqa: E402
from dynbn.methods import build_method  # noqa: E402
from dynbn.models import architecture, build_model, checkpoint_path  # noqa: E402
from streamer.artifacts import artifacts_dir, cache_key, fit_config  # noqa: E402
from streamer.completion import wait_complete  # noqa: E402
from streamer.connection import connect  # noqa: E402
from streamer.keys import Keys  # noqa: E402
from streamer.redis_transport import RedisTransport  # noqa: E402
from streamer.scenario import load  # noqa: E402
from streamer.summary import parse_results  # noqa: E402
from streamer.wire import Truth  # noqa: E402

CAMERAS = 16  # in-process: cameras whose frames interleave in every batch


class Budget:
    """Wall-clock seconds left of ``--budget-s``."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.start = seconds, time.monotonic()

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)


def say(message: str) -> None:
    print(message, flush=True)


# -- models and their stand-in table and detector ---------------------------------------------------------

def resnet20(stand_in_dir: Path) -> tuple[torch.nn.Module, str, Path]:
    """(model, weights, data directory): ``build_model("resnet20")`` from the data directory ($DYNBN_DATA)
    when it holds the checkpoint; else the same network with random weights, saved as a checkpoint under
    ``stand_in_dir`` so that the worker processes build it exactly as the service does."""
    try:
        return build_model("resnet20"), "checkpoint", data.data_dir()
    except data.DataError:
        torch.manual_seed(0)
        path = checkpoint_path(20, stand_in_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": architecture("resnet20").net.state_dict()}, path)
        return build_model("resnet20", stand_in_dir), "random", stand_in_dir


# -- in process -------------------------------------------------------------------------------------------

@torch.no_grad()
def arm_fps(arm, x: torch.Tensor, cams: list[str], device: str, precision: str, min_s: float) -> float:
    """Frames/s of ``arm`` on batch ``x`` (on the device), over at least ``min_s`` seconds after a warm-up."""
    with autocast(device, precision):
        arm(x, cams)  # warm-up: cuDNN picks its kernels, caches fill
        synchronize(device)
        t0 = time.perf_counter()
        arm(x, cams)
        synchronize(device)
        reps = max(2, min(100, math.ceil(min_s / max(time.perf_counter() - t0, 1e-6))))
        t0 = time.perf_counter()
        for _ in range(reps):
            arm(x, cams)
        synchronize(device)
        return reps * len(x) / (time.perf_counter() - t0)


@torch.no_grad()
def agreement(arm, x: torch.Tensor, cams: list[str], device: str) -> float:
    """Share of frames whose bf16 class is the fp32 class, each from the arm's just-built state."""
    classes = []
    for precision in ("fp32", "bf16"):
        arm.reset()
        with autocast(device, precision):
            classes.append(arm(x, cams).argmax(1))
    arm.reset()
    return float((classes[0] == classes[1]).float().mean())


@torch.no_grad()
def stage_times(arm, frames: list[np.ndarray], cams: list[str], device: str, precision: str, reps: int) -> dict:
    """Median ms per batch of each step of the worker's batch (``FrameLoader.load``, then ``DynBNVote.forward``),
    the device synchronised between steps."""
    loader = FrameLoader(frames[0].shape, device, len(frames))
    times: dict[str, list[float]] = {"copy_ms": [], "detector_ms": [], "vote_ms": [], "forward_ms": []}
    with autocast(device, precision):
        for rep in range(reps + 1):  # the first pass warms up
            t0 = time.perf_counter()
            x = loader.load(frames)
            synchronize(device)
            t1 = time.perf_counter()
            logits, _, logp = arm.detector.read(x, severity=arm.severity)  # the spectrum, the MLP, the severity head
            synchronize(device)
            t2 = time.perf_counter()
            active = arm.vote(cams, logits)
            weights = arm.level_weights(cams, active, logp)
            t3 = time.perf_counter()
            arm.voted_forward(x, cams, active, weights)
            synchronize(device)
            t4 = time.perf_counter()
            if rep:
                for key, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    times[key].append(1e3 * seconds)
    out = {key: statistics.median(v) for key, v in times.items()}
    out["total_ms"] = sum(out.values())
    out["copy_bytes"] = sum(f.nbytes for f in frames)
    return out


def inprocess(out: dict, spec: str, model, size: int, domains: list[str], device: str, batches, precisions,
              budget: Budget, min_s: float, stage_reps: int) -> None:
    """Section 1 and 2 for one model: fills ``out["inprocess"]`` and ``out["stages"]``."""
    table, detector = stand_in(model, domains, size)
    model = model.to(device).eval()
    arms = {"source": build_method("source", model),
            "dynbn_vote": build_method("dynbn_vote", model, table=table.to(device), detector=detector.to(device))}
    say(f"{spec} ({size} px) on {device}: dynbn_vote with {len(table.domains)} table entries, severity head "
        f"{arms['dynbn_vote'].severity}")
    gen = np.random.default_rng(0)
    for batch in batches:
        cams = [f"cam{i % CAMERAS:02d}" for i in range(batch)]
        frames = list(gen.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))  # as the worker decodes them
        x = FrameLoader((size, size, 3), device, batch).load(frames)
        for precision in precisions:
            where = {"model": spec, "batch_size": batch, "precision": precision}
            if budget.left() <= 0:
                out["skipped"].append({"section": "inprocess", **where, "reason": "budget spent"})
                continue
            row = dict(where, input_size=size)
            try:
                for name, arm in arms.items():
                    arm.reset()
                    row[f"{name}_fps"] = arm_fps(arm, x, cams, device, precision, min_s)
                row["dynbn_vote_vs_source"] = row["dynbn_vote_fps"] / row["source_fps"]
                if precision != "fp32":
                    row["agreement_with_fp32"] = {name: agreement(arm, x, cams, device) for name, arm in arms.items()}
                out["inprocess"].append(row)
                say(f"  B={batch:<5} {precision}: source {row['source_fps']:9.0f} fps, dynbn_vote "
                    f"{row['dynbn_vote_fps']:9.0f} fps ({row['dynbn_vote_vs_source']:.2f} of source)")
                stages = dict(where, **stage_times(arms["dynbn_vote"], frames, cams, device, precision, stage_reps))
                out["stages"].append(stages)
                say("             stages (ms per batch): " + ", ".join(
                    f"{k[:-3]} {stages[k]:.2f}" for k in ("copy_ms", "detector_ms", "vote_ms", "forward_ms")))
            except Exception as exc:  # e.g. out of memory: the other cells still run
                out["errors"].append({"section": "inprocess", **where, "error": f"{type(exc).__name__}: {exc}"})
                say(f"  B={batch} {precision}: {type(exc).__name__}: {exc}")
            finally:
                if torch.device(device).type == "cuda":
                    torch.cuda.empty_cache()
        del x
    arms.clear()


# -- end to end ---------------------------------------------------------------------------------------------

def publish_cameras(url: str, prefix: str, partitions: int, cameras: list[int], per_camera: int, size: int) -> None:
    """One publisher process: ``per_camera`` random frames of each camera in ``cameras``, time-major, each
    camera's frames in order (``stream_throughput.send``: pipelined XADDs)."""
    t = RedisTransport(connect(url), Keys(prefix), partitions)
    images = {c: np.random.default_rng([0, c]).integers(0, 256, (per_camera, size, size, 3), dtype=np.uint8)
              for c in cameras}
    send(t, partitions, [(c, s, images[c][s], Truth(since_shift=s)) for s in range(per_camera) for c in cameras])
    t.close()


def e2e(server: RedisServer, scenario: Path, scn, workers: int, publishers: int, env: dict, folder: Path,
        budget: Budget) -> dict:
    """One run: ``workers`` worker processes join, then ``publishers`` processes publish every frame; waits
    for the run's end (at most what is left of the budget) and checks every frame's one result."""
    prefix = f"gpu{uuid.uuid4().hex[:6]}"
    t = RedisTransport(connect(server.url), Keys(prefix), scn.partitions)
    logs = folder / f"e2e-{workers}w"
    logs.mkdir()
    procs = start_workers({**worker_env(server.url, prefix, scenario, 1), **env}, workers, logs)
    pubs: list[multiprocessing.Process] = []
    total = scn.cameras * scn.frames_per_camera
    run = {"workers": workers, "publishers": publishers, "frames": total, "batch": scn.batch.size,
           "cameras": scn.cameras, "partitions": scn.partitions}
    try:
        join(t, workers, procs, timeout_s=max(1.0, budget.left()), settle_s=4.0 if workers > 1 else 0.5)
        t.setup()
        t.set_run(scenario=scn.name, planned=total, published=0, done=0, partitions=scn.partitions,
                  arms=",".join(scn.arms), label_kind="random", started=time.time())
        spawn = multiprocessing.get_context("spawn")  # this process may hold CUDA: no fork
        pubs = [spawn.Process(target=publish_cameras, args=(server.url, prefix, scn.partitions,
                                                            list(range(p, scn.cameras, publishers)),
                                                            scn.frames_per_camera, 32)) for p in range(publishers)]
        for p in pubs:
            p.start()
        for p in pubs:
            p.join(max(1.0, budget.left()))
        if any(p.exitcode != 0 for p in pubs):
            raise RuntimeError(f"publisher exit codes {[p.exitcode for p in pubs]}")
        t.set_run(published=total, done=1)
        run["complete"] = wait_complete(t, max(1.0, budget.left()), poll_s=0.1, stall_s=60)
        for p in procs:
            p.wait(min(30.0, max(1.0, budget.left())))  # they exit once the run is complete
    except Exception as exc:
        run["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        for p in pubs:
            if p.is_alive():
                p.kill()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    run["worker_exit_codes"] = [p.returncode for p in procs]
    # where each worker says it ran ("worker NAME ready on DEVICE ..."): STREAMER_DEVICE reached it
    run["worker_devices"] = sorted({line.split(" ready on ")[1].split()[0] for log in logs.glob("*.log")
                                    for line in log.read_text().splitlines() if " ready on " in line})
    results = parse_results(t.results())
    keys = Counter((r.camera, r.seq) for r in results)
    want = {(f"cam{c:02d}", s) for c in range(scn.cameras) for s in range(scn.frames_per_camera)}
    run.update(results=len(results), missing=len(want - set(keys)), unexpected=len(set(keys) - want),
               duplicated=sum(n - 1 for n in keys.values()), dead_letters=len(t.dead_letters()))
    run["exactly_once"] = (len(results) == total and run["missing"] == run["unexpected"] == run["duplicated"]
                           == run["dead_letters"] == 0)
    if results:
        t_pub, t_done = [r.t_pub for r in results], [r.t_done for r in results]
        run["e2e_fps"] = steady_fps(results)
        run["publish_fps"] = len(results) / max(max(t_pub) - min(t_pub), 1e-9)
        run["wall_fps"] = len(results) / max(max(t_done) - min(t_pub), 1e-9)  # first publish to last result
        run["results_by_worker"] = dict(Counter(r.worker for r in results))
        latency = np.array(t_done) - np.array(t_pub)
        run["latency_ms"] = {q: float(1e3 * np.percentile(latency, int(q[1:]))) for q in ("p50", "p90", "p99")}
    if "error" in run or not run.get("complete"):
        run["worker_log_tail"] = {p.name: p.read_text().splitlines()[-5:] for p in sorted(logs.glob("*.log"))}
    t.close()
    return run


def end_to_end(out: dict, folder: Path, device: str, model, data_root: Path, counts: list[int], quick: bool,
               budget: Budget) -> None:
    """Section 3: the scenario workers on a private redis-server, with a stand-in table and detector in a
    private artifacts cache (the workers load it; nothing is fitted)."""
    cameras, per_camera, batch, partitions = (4, 24, 16, 2) if quick else (16, 4000, 256, 8)
    base = load(ROOT / "scenarios/acceptance.yaml")
    scn = base.model_copy(update={"name": "gpu", "arms": ["dynbn_vote"], "cameras": cameras, "partitions": partitions,
                                  "frames_per_camera": per_camera,
                                  "batch": base.batch.model_copy(update={"size": batch, "max_wait_ms": 20})})
    scenario = folder / "gpu.yaml"
    scenario.write_text(yaml.safe_dump(json.loads(scn.model_dump_json())))
    cache = artifacts_dir(folder / "artifacts") / cache_key(scn.model, fit_config(scn))
    cache.mkdir(parents=True)
    table, detector = stand_in(model.cpu(), scn.domains(), 32)
    detector.save(cache / "detector.safetensors")
    table.save(cache / "bn_table.safetensors")
    env = {"STREAMER_DEVICE": device, "STREAMER_ARTIFACTS": str(folder / "artifacts"), "DYNBN_DATA": str(data_root),
           "STREAMER_METRICS_PORT": "0"}
    server = RedisServer(folder / "redis", aof=False).start()
    try:
        for workers in counts:
            if budget.left() < 20:
                out["skipped"].append({"section": "e2e", "workers": workers, "reason": "budget spent"})
                continue
            publishers = 1 if quick else 4
            say(f"e2e: {workers} worker(s) on {device}, {publishers} publisher(s), {cameras * per_camera} frames ...")
            run = e2e(server, scenario, scn, workers, publishers, env, folder, budget)
            out["e2e"].append(run)
            say(f"  e2e {run.get('e2e_fps', float('nan')):.0f} fps (publishers {run.get('publish_fps', float('nan')):.0f}"
                f" fps), every frame scored exactly once: {run['exactly_once']}"
                + (f"; {run['error']}" if "error" in run else ""))
    finally:
        server.stop()


# -- the run ------------------------------------------------------------------------------------------------

def header(device: str, args) -> dict:
    cuda = torch.device(device).type == "cuda"
    return {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "device_spec": device,
            "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
            "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
            "python": platform.python_version(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "quick": args.quick, "budget_s": args.budget_s, "cameras_in_process": CAMERAS,
            "inprocess": [], "stages": [], "e2e": [], "skipped": [], "errors": []}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help=device_help("auto"))
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a CPU smoke test in well under a minute")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="skip what is left once this many seconds have passed (default 420)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/gpu.json"))
    args = ap.parse_args()
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    budget = Budget(args.budget_s)
    out = header(device, args)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        out["wall_s"] = round(time.monotonic() - budget.start, 1)
        path.write_text(json.dumps(out, indent=1))

    batches, precisions = ((8, 16), ("fp32", "bf16")) if args.quick else ((64, 256, 1024), ("fp32", "bf16"))
    min_s, stage_reps = (0.05, 2) if args.quick else (0.5, 5)
    say(f"device {out['device']} ({device}); torch {out['torch']}, CUDA {out['cuda']}; budget {args.budget_s:.0f} s")
    with tempfile.TemporaryDirectory(prefix="dynbn-gpu-") as tmp:
        folder = Path(tmp)
        model, weights, data_root = resnet20(folder / "data")
        out["weights"] = {"resnet20": weights, "tv:resnet50": "random"}
        inprocess(out, "resnet20", model, 32, list(DEFAULT_DOMAINS), device, batches, precisions, budget, min_s,
                  stage_reps)
        write()
        if not args.quick:
            if budget.left() > 0:
                resnet50 = build_model("tv:resnet50", input_size=224)
                inprocess(out, "tv:resnet50", resnet50, 224, list(DEFAULT_DOMAINS), device, batches, precisions, budget,
                          min_s, stage_reps)
                del resnet50
                if torch.device(device).type == "cuda":
                    torch.cuda.empty_cache()
            else:
                out["skipped"].append({"section": "inprocess", "model": "tv:resnet50", "reason": "budget spent"})
            write()
        end_to_end(out, folder, device, model, data_root, [1] if args.quick else [1, 2, 4], args.quick, budget)
    write()
    say(f"wrote {path} ({out['wall_s']:.0f} s; {len(out['skipped'])} skipped, {len(out['errors'])} errors)")
    return 0 if not out["errors"] and all(r["exactly_once"] for r in out["e2e"]) else 1


if __name__ == "__main__":
    sys.exit(main())
