"""Time every corruption at severities 3 and 5; print a table and write JSON.

    DYNBN_DATA=../shared/data python bench/corruptions_speed.py --n 1000

Reports seconds per 10,000 CIFAR-10 test images (extrapolated linearly from --n) for each
corruption, plus the machine facts that move those numbers. One process, one image batch,
one corruption at a time; a warm-up call on a few images first keeps one-off costs (frost
overlays, cached kernels) out of the timings. Exits 1 when any corruption is slower than
--budget-s per 10,000 images.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import PIL
import scipy

from dynbn.corruptions import ALL, corrupt

SEVERITIES = (3, 5)


def facts() -> dict:
    """Versions and thread counts that decide the timings (no torch involved)."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "opencv": cv2.__version__,
        "pillow": PIL.__version__,
        "cv2_threads": cv2.getNumThreads(),
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "thread_env": {k: os.environ[k] for k in os.environ
                       if k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
    }


def time_one(images: np.ndarray, name: str, severity: int, frost_dir: Path) -> float:
    """Seconds for one corrupt() call on the whole batch."""
    rng = np.random.default_rng(severity)
    start = time.perf_counter()
    corrupt(images, name, severity, rng, frost_dir=frost_dir)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="images to time on (default 1000)")
    parser.add_argument("--data-dir", default=os.environ.get("DYNBN_DATA"),
                        help="data directory with cifar10/test.npz and frost/ (default $DYNBN_DATA)")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "corruptions_speed.json")
    parser.add_argument("--budget-s", type=float, default=180.0, help="limit per 10,000 images (default 180)")
    parser.add_argument("--only", nargs="*", default=list(ALL), help="corruption names (default: all)")
    args = parser.parse_args(argv)
    if not args.data_dir:
        parser.error("set DYNBN_DATA or pass --data-dir (a folder holding cifar10/test.npz and frost/)")

    data = Path(args.data_dir)
    images = np.load(data / "cifar10" / "test.npz")["images"][: args.n]
    scale = 10_000 / len(images)
    print(f"{len(images)} images {images.shape[1:]}, cv2 threads {cv2.getNumThreads()}, "
          f"nproc {os.cpu_count()}; seconds per 10,000 images")
    print(f"{'corruption':20s} " + " ".join(f"{'sev ' + str(s):>8s}" for s in SEVERITIES))
    results = {}
    for name in args.only:
        corrupt(images[:8], name, 5, np.random.default_rng(0), frost_dir=data / "frost")  # warm-up
        per = {str(s): round(time_one(images, name, s, data / "frost") * scale, 2) for s in SEVERITIES}
        results[name] = {**per, "max": max(per.values())}
        flag = "" if results[name]["max"] <= args.budget_s else "  SLOW"
        print(f"{name:20s} " + " ".join(f"{v:8.2f}" for v in per.values()) + flag, flush=True)

    slow = [name for name, r in results.items() if r["max"] > args.budget_s]
    report = {
        "what": "seconds per 10,000 32x32 images, one corrupt() call per corruption and severity",
        "n_images": len(images),
        "severities": list(SEVERITIES),
        "budget_s_per_10k": args.budget_s,
        "seconds_per_10k": results,
        "slow": slow,
        "total_s_per_10k_all_severities_est": round(sum(r["max"] for r in results.values()) * 5, 1),
        "facts": facts(),
        "argv": sys.argv[1:] if argv is None else argv,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}" + (f"; slower than {args.budget_s:.0f} s: {', '.join(slow)}" if slow else ""))
    return 1 if slow else 0


if __name__ == "__main__":
    raise SystemExit(main())
