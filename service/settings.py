"""Gateway settings, read from `THORAX_` environment variables in this one place."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.access import parse_keys


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="THORAX_", extra="ignore")

    # models and backend
    default_model: str | None = None  # NAME[/VERSION]; the store's default if unset
    # auto: the CUDA GPU if onnxruntime sees one, else OpenVINO bf16 on a CPU with AVX512-BF16 or AMX,
    # else onnxruntime fp32 (service/backends/__init__.py)
    backend: Literal["auto", "onnxruntime", "openvino", "onnxruntime-cuda", "torchserve"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # bf16: OpenVINO, where the CPU has it
    torchserve_url: str | None = None  # inference base URL, e.g. http://torchserve:8080
    onnx_threads: int = Field(default=1, ge=1)  # intra-op threads of onnxruntime and OpenVINO
    batch_size: int = Field(default=32, ge=1, le=1024)  # images per inference call

    # storage: a local folder unless an S3 endpoint is configured
    storage_dir: Path = Path("thorax-data")
    storage_prefix: str = ""  # every job lives under this prefix; requests cannot leave it
    s3_endpoint: str | None = None  # host:port
    s3_bucket: str = "thorax"
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_secure: bool = False
    s3_region: str | None = None
    s3_part_size: int = Field(default=8 * 1024 * 1024, ge=5 * 1024 * 1024)
    # Where clients reach the S3 server, when not at s3_endpoint (e.g. an in-cluster service name):
    # shard URLs are signed for host:port here, with s3_public_secure (default: s3_secure).
    s3_public_endpoint: str | None = None
    s3_public_secure: bool | None = None
    storage_retry_seconds: float = Field(default=60.0, ge=0)  # keep retrying storage this long, then fail

    # where jobs run: "local" (this process's threads, one gateway replica) or "dask" (the shards are
    # tasks on a Dask cluster's workers; any number of gateway replicas share the bucket)
    executor: Literal["local", "dask"] = "local"
    dask_scheduler: str | None = Field(default=None, validate_default=True)  # tcp://host:8786

    # limits
    max_count: int = Field(default=1_000_000, ge=1)
    max_shard_size: int = Field(default=10_000, ge=1)
    max_active_jobs: int = Field(default=4, ge=1)  # queued + running; 429 past it
    job_workers: int = Field(default=1, ge=1)  # jobs running at once
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_preview: int = Field(default=16, ge=1)

    # access: comma-separated keys, `admin:KEY` for one that sees every job; with any configured, every
    # route but health needs one, and a key sees only the jobs it submitted
    api_keys: str = ""
    resume_on_start: bool = True

    # reader studies: the operator's folder of real radiographs, read only to show them to readers (never
    # copied into storage, shards or the model store); without it no study can be created
    study_images: Path | None = None

    @property
    def api_key_set(self) -> frozenset[str]:
        return frozenset(parse_keys(self.api_keys))

    @property
    def admin_key_set(self) -> frozenset[str]:
        return frozenset(key for key, admin in parse_keys(self.api_keys).items() if admin)

    @field_validator("dask_scheduler")
    @classmethod
    def _dask_needs_a_scheduler(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("executor") == "dask" and not value:
            raise ValueError("the dask executor needs the scheduler's address, e.g. tcp://host:8786")
        return value
