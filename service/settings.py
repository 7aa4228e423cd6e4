"""Settings: the only reader of the environment (prefix `LATENT_TREES_`, plus `DATABASE_URL`)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import platformdirs
import pydantic
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from service import errors

Device = Literal["auto", "cpu", "cuda"]


def _default_home() -> Path:
    return Path(platformdirs.user_data_dir("latent-trees", appauthor=False))


class Settings(BaseSettings):
    """Every setting of latent-trees; see the README's settings table."""

    model_config = SettingsConfigDict(
        env_prefix="LATENT_TREES_",
        extra="ignore",
        frozen=True,
        validate_default=True,
        populate_by_name=True,
    )

    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "LATENT_TREES_DATABASE_URL"),
        description="PostgreSQL >= 15 to use; unset starts the embedded server under home.",
    )
    home: Path = Field(
        default_factory=_default_home,
        description="Folder for the embedded server's data and the activation store.",
    )
    connect_timeout: int = Field(
        default=5, ge=1, le=600, description="Seconds to wait for a database connection."
    )
    device: Device = Field(default="auto", description="Where scores are computed.")
    threshold: float = Field(
        default=0.6, ge=0, description="An edge qualifies when its score exceeds this."
    )
    store_floor: float = Field(
        default=0.4,
        ge=0,
        description="Edges with score or mcs above this are stored (plus each child's 3 best"
        " parents and each parent's 3 best children).",
    )
    min_active_tokens: int = Field(
        default=10, ge=1, description="Both latents of a qualifying edge are active this often."
    )
    lease_seconds: float = Field(
        default=120, gt=0, description="A job's lease; a worker renews it while computing."
    )
    poll_seconds: float = Field(
        default=10, gt=0, description="How often an idle worker looks for jobs (besides NOTIFY)."
    )
    max_attempts: int = Field(default=3, ge=1, description="Attempts before a job is failed.")
    memory_budget_gb: float | None = Field(
        default=None,
        gt=0,
        description="Memory for one job's blocks of parent latents; unset: 16 or less.",
    )
    engine: Literal["auto", "numba", "triton", "torch"] = Field(
        default="auto",
        description="The engine's kernel: auto (numba on the CPU, triton on a GPU), or one.",
    )
    ray: str | None = Field(
        default=None,
        description="Run each job's blocks (and `ingest --sae` encodes) as Ray tasks on this"
        " cluster: auto, local, or ray://host:port; unset: in the worker's own process.",
    )
    ray_gpus_per_task: float = Field(
        default=0, ge=0, description="GPUs each Ray task asks for (0: CPU tasks)."
    )
    ray_cpus_per_task: float = Field(
        default=1, gt=0, description="CPUs each Ray task asks for (its kernel's threads)."
    )
    chunk_tokens: int = Field(
        default=65536, ge=1, description="Tokens per streamed chunk when reading activations."
    )
    encode_tokens: int = Field(
        default=4096, ge=1, description="Tokens per batch when encoding inputs with an sae."
    )
    encode_dtype: Literal["float32", "bfloat16"] = Field(
        default="float32", description="Dtype of sae weights and inputs while encoding."
    )
    top_activations: int = Field(
        default=10, ge=1, le=100, description="Largest activations kept per latent (contexts)."
    )
    statement_timeout: float = Field(
        default=5,
        gt=0,
        le=3600,
        description="Seconds a query of the API, an export or the reader role may run.",
    )
    releases: Path | None = Field(
        default=None,
        description="A directory of pretrained saes in the shape of SAELens's"
        " pretrained_saes.yaml, for `ingest --release`; default: the installed SAELens's.",
    )
    api_max_nodes: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="Nodes of a tree or DAG the API returns by default (the first by depth); the"
        " response says how many were left out.",
    )
    api_cache_mb: float = Field(
        default=64,
        ge=0,
        description="Memory per API process for responses kept while the data is unchanged.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="WARNING", description="Logging level of the CLI and workers."
    )

    @pydantic.field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @pydantic.field_validator("database_url")
    @classmethod
    def _postgres_only(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in ("postgres", "postgresql", "postgresql+psycopg"):
            raise ValueError("expected a postgresql:// URL")
        return value.strip()


def _env_name(field: str) -> str:
    if field.upper() in ("DATABASE_URL", "LATENT_TREES_DATABASE_URL"):
        return "DATABASE_URL"
    return "LATENT_TREES_" + field.upper()


def load() -> Settings:
    """Read settings from the environment; a bad value is a one-line SettingsError."""
    try:
        return Settings()
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        got = first.get("input")
        message = first["msg"].removeprefix("Value error, ")
        raise errors.SettingsError(
            f"bad setting {_env_name(field)}={got!r}: {message[:1].lower()}{message[1:]}"
        ) from None


@functools.cache
def get() -> Settings:
    """The settings of this process (read once)."""
    return load()
