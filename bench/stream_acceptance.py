"""Acceptance run through Redis: 2 worker processes, one SIGKILLed mid-run; exactly one result per frame and arm.

scenarios/acceptance.yaml: 4 cameras, a shift every 16 frames, 4,000 frames per camera.
A private redis-server (AOF, fsync everysec) on a free port; the simulator and the
workers run as their services do (``python -m simulator``, ``python -m streamer.worker``).
When a quarter of the frames have results, worker 0 is SIGKILLed; the other takes its
cameras over. Checks: every published frame has exactly one result, with every arm,
none lost, none duplicated; writes the run report and bench/results/stream_acceptance.json.

    python bench/stream_acceptance.py [--frames-per-camera 4000]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from redis_server import RedisServer  # noqa: E402

from streamer.artifacts import load_or_fit  # noqa: E402
from streamer.completion import wait_complete  # noqa: E402
from streamer.keys import Keys  # noqa: E402
from streamer.connection import connect  # noqa: E402
from streamer.redis_transport import RedisTransport  # noqa: E402
from streamer.scenario import load  # noqa: E402
from streamer.summary import parse_results, summarize, table, write  # noqa: E402


def spawn(module: str, env: dict, name: str, folder: Path) -> subprocess.Popen:
    log = open(folder / f"{name}.log", "w")
    return subprocess.Popen([sys.executable, "-m", module], env={**env, "STREAMER_NAME": name}, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)


def verify(scn, results, codes: list[int]) -> dict:
    """Exactly one result per published frame, every arm in each; the killed worker died by SIGKILL."""
    keys = Counter((r.camera, r.seq) for r in results)
    want = {(c, s) for c in scn.camera_ids for s in range(scn.frames_per_camera)}
    arms_ok = all(set(r.preds) == set(scn.arms) for r in results)
    check = {"frames_expected": len(want), "frames_with_results": len(keys), "missing": len(want - set(keys)),
             "unexpected": len(set(keys) - want), "duplicated": sum(n - 1 for n in keys.values()),
             "every_result_has_every_arm": arms_ok,
             "exit_codes": {"simulator": codes[0], "worker0": codes[1], "worker1": codes[2]},
             "results_by_worker": dict(Counter(r.worker for r in results))}
    check["passed"] = (check["missing"] == check["unexpected"] == check["duplicated"] == 0 and arms_ok
                       and codes[1] == -signal.SIGKILL and codes[2] == 0 and codes[0] == 0)
    return check


def run_with_kill(t: RedisTransport, scn, env: dict, folder: Path) -> tuple[list[int], float]:
    """Two workers and the simulator; SIGKILL worker0 at a quarter of the results; exit codes at the end."""
    workers = [spawn("streamer.worker", env, f"worker{i}", folder) for i in range(2)]
    try:
        while t.r.zcard(t.keys.members) < 2:
            time.sleep(0.2)
        start = time.time()
        sim = spawn("simulator", env, "simulator", folder)
        while t.counts()[0] < scn.total_frames // 4:
            time.sleep(0.2)
        before = Counter(r.worker for r in parse_results(t.results()))
        workers[0].send_signal(signal.SIGKILL)
        killed_at = time.time() - start
        print(f"SIGKILLed worker0 at {killed_at:.0f} s; results so far by worker: {dict(before)}", flush=True)
        assert wait_complete(t, 3600, poll_s=1.0), "run did not complete"
        return [sim.wait(60)] + [w.wait(60) for w in workers], killed_at
    finally:
        for p in workers:
            if p.poll() is None:
                p.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames-per-camera", type=int, default=4000)
    ap.add_argument("--out", default=str(ROOT / "bench/results"))
    args = ap.parse_args()
    scn = load(ROOT / "scenarios/acceptance.yaml").model_copy(update={"frames_per_camera": args.frames_per_camera})
    folder = Path(tempfile.mkdtemp(prefix="stream-acceptance-"))
    scenario = folder / "acceptance.yaml"
    scenario.write_text(yaml.safe_dump(json.loads(scn.model_dump_json())))
    load_or_fit(scn)  # fitted once here; the workers load the cache
    server = RedisServer(folder / "redis", fsync="everysec").start()
    env = {**os.environ, "REDIS_URL": server.url, "PYTHONPATH": str(ROOT), "SIM_SCENARIO": str(scenario),
           "STREAMER_SCENARIO": str(scenario), "STREAMER_THREADS": "1", "STREAMER_LEASE_MS": "3000",
           "STREAMER_EXIT_WHEN_DONE": "true"}
    t = RedisTransport(connect(server.url), Keys(), scn.partitions)
    start = time.time()
    codes, killed_at = run_with_kill(t, scn, env, folder)
    results = parse_results(t.results())
    rep = summarize(results, t.dead_letters(), t.get_run(), t.name)
    check = verify(scn, results, codes) | {"killed_at_s": killed_at, "wall_s": time.time() - start}
    rep["acceptance"] = check
    out = Path(args.out)
    write(rep, results, out / "stream_acceptance")
    (out / "stream_acceptance.json").write_text(json.dumps(check | {"report": "stream_acceptance/report.json"}, indent=1))
    print(table(rep))
    print(json.dumps(check, indent=1))
    print((folder / "worker1.log").read_text().strip().splitlines()[-1])
    server.stop()
    return 0 if check["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
