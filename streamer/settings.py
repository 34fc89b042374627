"""Settings of the worker and report services (``STREAMER_`` prefix; ``REDIS_URL``), built once in main()."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .keys import DEFAULT_PREFIX
from .wire import MAX_PAYLOAD_BYTES

REDIS_URL = Field("redis://127.0.0.1:6379/0", validation_alias=AliasChoices("REDIS_URL", "STREAMER_REDIS_URL"),
                  description="redis:// or rediss:// (TLS); a password goes in the URL: rediss://:PASSWORD@host:6380/0")


class StreamerSettings(BaseSettings):
    """The worker: ``python -m streamer.worker``."""

    model_config = SettingsConfigDict(env_prefix="STREAMER_")

    redis_url: str = REDIS_URL
    redis_ca: str | None = Field(None, description="CA bundle for rediss:// with a private CA")
    prefix: str = DEFAULT_PREFIX
    scenario: str = "default"
    artifacts: str | None = None
    data_dir: str | None = Field(None, validation_alias=AliasChoices("DYNBN_DATA", "STREAMER_DATA_DIR"))
    name: str | None = None
    lease_ms: int = Field(5000, ge=200)
    max_deliveries: int = Field(5, ge=1, description="deliveries before an entry is dead-lettered (crash loops, outages)")
    max_payload: int = Field(MAX_PAYLOAD_BYTES, ge=1024)
    max_batch_bytes: int = Field(64 << 20, ge=1 << 16, description="frame bytes one batch holds at most (plus one entry)")
    exit_when_done: bool = False
    threads: int = Field(0, ge=0, description="torch threads; 0 keeps torch's default")
    device: str = Field("auto", description="auto (the first CUDA device, else the CPU), cpu, cuda or cuda:N")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="the classifier's precision (autocast)")
    metrics_port: int = Field(0, ge=0, le=65535, description="/metrics, /healthz, /readyz and the live page; 0: off")
    keep_freed_memory: bool = Field(True, description="raise glibc's malloc thresholds (streamer.allocator): "
                                    "~20 % faster CPU forwards for the peak heap kept")
    log_level: str = "INFO"


class ReportSettings(BaseSettings):
    """The report: ``python -m streamer.report`` waits for the run to finish, then writes DIR/report.*."""

    model_config = SettingsConfigDict(env_prefix="STREAMER_")

    redis_url: str = REDIS_URL
    redis_ca: str | None = None
    prefix: str = DEFAULT_PREFIX
    out: str = "report"
    wait_s: float = Field(3600.0, ge=0, description="longest wait for the run to complete")
    stall_s: float = Field(120.0, gt=0, description="report once nothing was published or handled for this long")
    run_max_age_s: float = Field(0.0, ge=0, description="> 0: ignore a run started longer ago (a reused Redis)")
    log_level: str = "INFO"
