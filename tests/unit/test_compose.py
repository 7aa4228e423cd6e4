"""docker-compose.yml and the Dockerfile: nothing here runs Docker, so check their structure."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_services_and_dependencies() -> None:
    services = _compose()["services"]
    assert {n for n, s in services.items() if "profiles" not in s} == {
        "postgres",
        "migrate",
        "worker",
        "api",
    }
    assert services["postgres"]["image"] == "postgres:18"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("worker", "api"):
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy"
        assert deps["migrate"]["condition"] == "service_completed_successfully"


def test_worker_reserves_a_gpu_and_all_apps_share_one_database() -> None:
    services = _compose()["services"]
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    pg_env = services["postgres"]["environment"]
    expected = (
        f"postgresql://{pg_env['POSTGRES_USER']}:{pg_env['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{pg_env['POSTGRES_DB']}"
    )
    for name in ("migrate", "worker", "api"):
        assert services[name]["environment"]["DATABASE_URL"] == expected
        assert services[name]["build"] == "."


def test_volumes_are_declared() -> None:
    compose = _compose()
    declared = set(compose["volumes"])
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            assert volume.split(":")[0] in declared


def test_dockerfile_copies_only_files_that_exist() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    copies = re.findall(r"^COPY\s+(.+?)\s+\S+$", dockerfile, flags=re.M)
    assert copies
    for sources in copies:
        for source in sources.split():
            assert (REPO / source).exists(), f"Dockerfile copies missing {source}"
    assert re.search(r"^ENTRYPOINT \[\"latent-trees\"\]$", dockerfile, flags=re.M)


def test_api_serves_on_all_interfaces_and_checks_its_own_health() -> None:
    api = _compose()["services"]["api"]
    command = api["command"]
    assert command[0] == "serve" and command[command.index("--host") + 1] == "0.0.0.0"
    port = command[command.index("--port") + 1]
    assert f"{port}:{port}" in api["ports"]
    assert f"http://127.0.0.1:{port}/api/families" in " ".join(api["healthcheck"]["test"])


def test_the_ray_profile_shares_the_store_and_reserves_a_gpu_per_node() -> None:
    compose = _compose()
    services = compose["services"]
    ray = {n for n, s in services.items() if s.get("profiles") == ["ray"]}
    assert ray == {"ray-head", "ray-node", "ray-driver"}
    for name in ray:  # one store every node reads (tasks open activations by path)
        assert services[name]["volumes"] == ["store:/data"]
        assert services[name]["environment"]["LATENT_TREES_HOME"] == "/data"
    for name in ("ray-head", "ray-node"):
        assert services[name]["entrypoint"] == ["ray"]
        assert services[name]["shm_size"] == "8gb"  # Ray's object store in /dev/shm
    assert "--ray-client-server-port=10001" in services["ray-head"]["command"]
    assert "--address=ray-head:6379" in services["ray-node"]["command"]
    node_gpu = services["ray-node"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert node_gpu["capabilities"] == ["gpu"]
    env = services["ray-driver"]["environment"]
    assert env["LATENT_TREES_RAY"] == "ray://ray-head:10001"
    assert env["LATENT_TREES_RAY_GPUS_PER_TASK"] == "1"
    assert '".[ray]"' in (REPO / "Dockerfile").read_text()
