"""The compose deployment validates and keeps the keys where the threat model says.

Runs ``docker-compose config`` (the Debian ``docker-compose`` package; no Docker engine is
needed) and checks the rendered file: only the gateway can read ``secret.ctx``, the
he-matcher never sees ``queue.key``, every worker gets ``task.key``, Redis asks for a
password, the embedder reserves a GPU, the matcher scales, and each service connects to MariaDB
with its own account while only ``migrate`` holds root's.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from veilface.config import load_settings
from veilface.store.db import make_engine, session_factory, session_scope
from veilface.store.models import Base, Worker, utcnow

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
KEY_VOLUMES = ("keys-secret", "keys-embedder", "keys-matcher")
PASSWORDS = {
    "MYSQL_ROOT_PASSWORD": "test-root-pw",
    "MYSQL_GATEWAY_PASSWORD": "test-gateway-pw",
    "MYSQL_EMBEDDER_PASSWORD": "test-embedder-pw",
    "MYSQL_MATCHER_PASSWORD": "test-matcher-pw",
    "REDIS_PASSWORD": "test-redis-pw",
}


def _compose(*args: str, **env: str) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose not found: apt-get install docker-compose"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VEILFACE_", "MYSQL_", "COMPOSE_"))}
    return subprocess.run(
        [exe, "-f", str(COMPOSE_FILE), "--env-file", str(DEPLOY / ".env.example"), *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _block(lines: list[str], key: str, indent: int) -> list[str]:
    """Lines under ``key:`` at ``indent`` in block-style YAML (list items may share the indent;
    blank lines belong to multi-line strings)."""
    head = " " * indent + key + ":"
    for i, line in enumerate(lines):
        if line == head or line.startswith(head + " "):
            out = []
            for nxt in lines[i + 1 :]:
                if not nxt.strip() or nxt.startswith((" " * (indent + 1), " " * indent + "- ")):
                    out.append(nxt)
                else:
                    break
            return out
    return []


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    """Each service of the rendered compose file, as its block of text."""
    result = _compose("config", **PASSWORDS)
    assert result.returncode == 0, result.stderr
    services = _block(result.stdout.splitlines(), "services", 0)
    blocks: dict[str, list[str]] = {}
    for line in services:
        if line.startswith("  ") and not line.startswith("   ") and line.endswith(":"):
            current = blocks.setdefault(line.strip()[:-1], [])
        else:
            current.append(line)
    return {name: "\n".join(body) for name, body in blocks.items()}


def _list(block: str, key: str) -> list[str]:
    return [line.strip()[2:] for line in _block(block.splitlines(), key, 4) if line.strip().startswith("- ")]


def _key_mounts(block: str) -> dict[str, str]:
    """Key volume -> mount spec (``name:path:mode``) of one service."""
    return {v.split(":")[0]: v for v in _list(block, "volumes") if v.split(":")[0] in KEY_VOLUMES}


def test_compose_config_is_valid(rendered: dict[str, str]) -> None:
    services = {"keys", "migrate", "gateway", "embedder", "he-matcher", "trainer", "redis", "mysql"}
    assert set(rendered) == services


@pytest.mark.parametrize("missing", sorted(PASSWORDS))
def test_passwords_are_required_not_defaulted(missing: str) -> None:
    result = _compose("config", **{k: v for k, v in PASSWORDS.items() if k != missing})
    assert result.returncode != 0 and missing in result.stderr


def _database_urls(block: str) -> dict[str, str]:
    return {
        line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip()
        for line in block.splitlines()
        if line.strip().startswith("VEILFACE_") and "DATABASE_URL:" in line
    }


def test_each_service_connects_with_its_own_account_and_only_migrate_as_root(rendered: dict[str, str]):
    accounts = {"gateway": "gateway", "embedder": "embedder", "he-matcher": "matcher"}
    for service, account in accounts.items():
        url = f"mysql+mysqldb://veilface_{account}:test-{account}-pw@mysql:3306/veilface?charset=utf8mb4"
        assert _database_urls(rendered[service]) == {"VEILFACE_DATABASE_URL": url}, service
        assert "migrate:" in "\n".join(_block(rendered[service].splitlines(), "depends_on", 4)), service
    migrate = rendered["migrate"]
    assert _list(migrate, "command") == ["veilface", "db", "migrate"]
    urls = _database_urls(migrate)
    assert urls.pop("VEILFACE_DATABASE_URL").startswith("mysql+mysqldb://root:test-root-pw@mysql:3306/")
    assert urls == {
        f"VEILFACE_{account.upper()}_DATABASE_URL": _database_urls(rendered[service])["VEILFACE_DATABASE_URL"]
        for service, account in accounts.items()
    }
    holders = {name for name, block in rendered.items() if "test-root-pw" in block}
    assert holders == {"migrate", "mysql"}


def test_redis_asks_for_the_password_every_service_sends(rendered: dict[str, str]) -> None:
    redis = rendered["redis"]
    command = _list(redis, "command")
    assert command[command.index("--requirepass") + 1] == "test-redis-pw"
    assert "REDISCLI_AUTH: test-redis-pw" in redis
    for service in ("gateway", "embedder", "he-matcher"):
        assert "VEILFACE_BROKER_URL: redis://:test-redis-pw@redis:6379/0" in rendered[service]


def test_only_the_gateway_reads_the_secret_key(rendered: dict[str, str]) -> None:
    readers = {name for name, block in rendered.items() if "keys-secret" in _key_mounts(block)}
    assert readers == {"keys", "gateway"}
    assert _key_mounts(rendered["gateway"]) == {"keys-secret": "keys-secret:/keys:ro"}


def test_workers_mount_only_their_own_key_copy(rendered: dict[str, str]) -> None:
    assert _key_mounts(rendered["embedder"]) == {"keys-embedder": "keys-embedder:/keys:ro"}
    assert _key_mounts(rendered["he-matcher"]) == {"keys-matcher": "keys-matcher:/keys:ro"}
    assert _key_mounts(rendered["trainer"]) == {}
    queue_key_readers = {name for name, block in rendered.items() if "keys-embedder" in _key_mounts(block)}
    assert queue_key_readers == {"keys", "embedder"}
    for service in ("embedder", "he-matcher"):
        assert "VEILFACE_KEY_DIR: /keys" in rendered[service]


def test_keys_service_gives_each_worker_only_its_files(rendered: dict[str, str]) -> None:
    script = rendered["keys"]
    assert "veilface keys init" in script
    assert "put public.ctx /export/embedder" in script
    assert "put queue.key /export/embedder" in script
    assert "put task.key /export/embedder" in script
    assert "put public.ctx /export/matcher" in script
    assert "put task.key /export/matcher" in script
    assert "put queue.key /export/matcher" not in script
    assert "put secret.ctx" not in script
    assert "network_mode: none" in script


def test_embedder_reserves_a_gpu_and_builds_onnxruntime_gpu(rendered: dict[str, str]) -> None:
    block = rendered["embedder"]
    devices = "\n".join(_block(block.splitlines(), "devices", 10))
    assert "driver: nvidia" in devices and "count: 1" in devices and "- gpu" in devices
    assert "ONNXRUNTIME_PACKAGE: onnxruntime-gpu" in block
    assert "onnxruntime-gpu" in (DEPLOY / "Dockerfile").read_text()


def test_he_matcher_scales(rendered: dict[str, str]) -> None:
    block = rendered["he-matcher"]
    assert "container_name:" not in block
    assert "ports:" not in block
    assert "matcher@%h" in block


def test_gateway_service(rendered: dict[str, str]) -> None:
    block = rendered["gateway"]
    assert "published: 8080" in block and "target: 8080" in block
    assert "VEILFACE_BIND: 0.0.0.0:8080" in block
    assert _list(block, "command") == ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
    assert "working_dir: /app/services/gateway" in block


def test_workers_and_stores_have_no_outside_network(rendered: dict[str, str]) -> None:
    for service in ("embedder", "he-matcher", "mysql", "redis"):
        networks = "\n".join(_block(rendered[service].splitlines(), "networks", 4))
        assert "backend" in networks and "frontend" not in networks, service
        assert "ports:" not in rendered[service], service


def test_shared_data_is_read_only_and_stores_are_configured(rendered: dict[str, str]) -> None:
    for name, block in rendered.items():
        for volume in _list(block, "volumes"):
            if ":/shared" in volume:
                assert volume.endswith(":/shared:ro"), (name, volume)
    mysql = rendered["mysql"]
    assert "--max-allowed-packet=256M" in mysql and "--character-set-server=utf8mb4" in mysql
    # No schema at MariaDB's first start: `migrate` runs the DDL.
    assert all("docker-entrypoint-initdb.d" not in volume for volume in _list(mysql, "volumes"))
    assert _list(rendered["trainer"], "profiles") == ["train"]


def test_images_never_take_secrets_or_weights() -> None:
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for pattern in ("**/.env", "**/*.ctx", "**/*.key", "**/*.onnx", ".venv", ".git"):
        assert pattern in ignored


def _healthcheck():
    spec = importlib.util.spec_from_file_location("deploy_healthcheck", DEPLOY / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_worker_healthcheck_reads_the_heartbeat(tmp_path: Path) -> None:
    settings = load_settings({}, var_dir=tmp_path, worker_ttl_s=30.0)
    engine = make_engine(settings)
    Base.metadata.create_all(engine)
    with session_scope(session_factory(engine)) as session:
        session.add(Worker(name="embedder@fresh", kind="embedder", queue="embed", key_fingerprint="f"))
        session.add(
            Worker(
                name="matcher@stale",
                kind="matcher",
                queue="match.matcher@stale",
                key_fingerprint="f",
                last_seen=utcnow() - timedelta(seconds=120),
            )
        )
    engine.dispose()
    check = _healthcheck()
    assert check.worker_ok("embedder", hostname="fresh", settings=settings)
    assert not check.worker_ok("matcher", hostname="stale", settings=settings)
    assert not check.worker_ok("embedder", hostname="absent", settings=settings)
    assert check.main(["bogus"]) == 2
