"""One settings object, read from ``VEILFACE_*`` environment variables.

Every setting has a documented default that needs no server: a SQLite file as the
ciphertext store and kombu's SQLAlchemy transport on SQLite as the queue. Production points
``VEILFACE_DATABASE_URL`` at MySQL/MariaDB and ``VEILFACE_BROKER_URL`` at Redis.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from veilface.crypto.keyfiles import QUEUE_KEY, SENTINEL_KEY, TASK_KEY

_REPO_ROOT = Path(__file__).resolve().parent.parent

#: Fewest characters of an operator-chosen secret: ``VEILFACE_BOOTSTRAP_API_KEY``, ``VEILFACE_METRICS_TOKEN``.
MIN_SECRET_LENGTH = 24


def _default_var_dir() -> Path:
    return _REPO_ROOT / "var"


@dataclass(frozen=True)
class Settings:
    """Runtime configuration shared by the gateway, the workers and the CLI.

    Attribute ``foo_bar`` is read from the environment variable ``VEILFACE_FOO_BAR``.
    """

    #: Working directory for the embedded defaults (SQLite file, queue folders, keys).
    var_dir: Path = field(default_factory=_default_var_dir)
    #: Read-only folder with ``data/`` (LFW, CFP) and ``models/`` (ONNX weights).
    shared_dir: Path = _REPO_ROOT.parent / "shared"
    #: SQLAlchemy URL of the ciphertext store; empty means ``sqlite:///{var_dir}/veilface.db``.
    database_url: str = ""
    #: Database URL of the gateway, the embedders and the he-matchers, each with its own account
    #: (MySQL/MariaDB). ``veilface db migrate`` creates these accounts with only the rights their
    #: service needs, and the local stack (``veilface.local.stack``) starts each process with its own;
    #: empty: the service uses ``database_url``.
    gateway_database_url: str = ""
    embedder_database_url: str = ""
    matcher_database_url: str = ""
    #: Celery broker; empty means kombu's SQLAlchemy transport on ``{var_dir}/queue.db``.
    broker_url: str = ""
    #: Celery result backend; empty means the broker for Redis, else ``db+sqlite:///{var_dir}/results.db``.
    result_backend: str = ""
    #: Folder of the key files: ``secret.ctx`` (gateway only), ``public.ctx``, ``queue.key``
    #: (gateway, embedders) and ``task.key`` (gateway and every worker).
    key_dir: Path | None = None
    #: Folder of the versioned model registry (``registry.json`` plus ONNX files).
    model_dir: Path | None = None
    #: Model version used when the registry names none: a built-in one (``edgeface_xs_xxs``, the
    #: ensemble of EdgeFace-XS and -XXS, 1024-D; ``edgeface_xs``, ``edgeface_xxs``, ``mobilefacenet``)
    #: or one registered by the trainer.
    recognizer: str = "edgeface_xs_xxs"
    #: Face detector file under ``{shared_dir}/models``.
    detector: str = "scrfd_2.5g_bnkps"
    #: Average the embedding of the face and of its mirror image.
    flip_fusion: bool = True
    #: Threads ONNX Runtime may use per session.
    onnx_threads: int = 1
    #: API key created with admin scope when the gateway starts (empty: none), at least
    #: :data:`MIN_SECRET_LENGTH` characters. Removing or changing it revokes the previous one.
    bootstrap_api_key: str = ""
    #: Bearer token that may read ``/metrics`` (empty: only admin API keys may), at least
    #: :data:`MIN_SECRET_LENGTH` characters.
    metrics_token: str = ""
    #: Largest accepted upload in bytes.
    max_upload_bytes: int = 16 * 1024 * 1024
    #: Largest accepted image in pixels (width x height), checked before decoding.
    max_image_pixels: int = 40_000_000
    #: Seconds the gateway waits for a worker answer before replying 503.
    task_timeout_s: float = 60.0
    #: Seconds a task may stay unacknowledged on Redis before it is delivered again (its worker
    #: was killed); keep it above the longest task, a compaction.
    broker_visibility_timeout_s: float = 120.0
    #: Seconds a task message (its signature, and its sealed image) stays valid; a worker refuses it
    #: afterwards. Keep it above the task timeout plus the visibility timeout, so that a task
    #: delivered again after its worker died still runs; hosts need clocks in step (NTP).
    message_ttl_s: float = 300.0
    #: Seconds after which a worker that sent no heartbeat counts as gone.
    worker_ttl_s: float = 30.0
    #: Templates in the delta of a gallery that trigger a compaction.
    compaction_threshold: int = 64
    #: Requests per minute allowed for one read- or eval-scope API key (0: unlimited); admin keys
    #: are not limited.
    rate_limit_per_minute: int = 120
    #: Verifications per minute against one subject of a gallery, all read and eval keys together
    #: (0: unlimited).
    subject_verify_per_minute: int = 20
    #: Failed authentications per minute from one client address before it is refused (0: unlimited).
    auth_failures_per_minute: int = 20
    #: Most candidates per face a read-scope key receives (``top_k`` above it is lowered to it).
    read_top_k_max: int = 5
    #: Most faces of one image searched in a gallery, in one batched search; the others are listed,
    #: not searched (0: all). A he-matcher refuses a search message of more probes than this.
    max_faces_per_request: int = 10
    #: Hidden sentinel templates a full block carries on average (0: none): each slot of a block
    #: is a sentinel with probability this / block capacity (8192), chosen with the gateway's
    #: secret ``sentinel.key``. A matcher answer that alters a sentinel's score is refused; see
    #: docs/encrypted-search.md for the odds per forged value.
    sentinels_per_block: int = 512

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.var_dir / 'veilface.db'}"

    @property
    def service_database_urls(self) -> dict[str, str]:
        """``service -> URL`` for each service given an account of its own."""
        urls = {
            "gateway": self.gateway_database_url,
            "embedder": self.embedder_database_url,
            "matcher": self.matcher_database_url,
        }
        return {service: url for service, url in urls.items() if url}

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.var_dir / 'queue.db'}"

    @property
    def celery_result_backend(self) -> str:
        if self.result_backend:
            return self.result_backend
        if self.celery_broker_url.startswith(("redis://", "rediss://")):
            return self.celery_broker_url
        return f"db+sqlite:///{self.var_dir / 'results.db'}"

    @property
    def keys_path(self) -> Path:
        return self.key_dir or self.var_dir / "keys"

    @property
    def public_context_path(self) -> Path:
        return self.keys_path / "public.ctx"

    @property
    def secret_context_path(self) -> Path:
        return self.keys_path / "secret.ctx"

    @property
    def queue_key_path(self) -> Path:
        """AES key sealing images on the embed queue: gateway and embedders only."""
        return self.keys_path / QUEUE_KEY

    @property
    def task_key_path(self) -> Path:
        """HMAC key signing every task message: gateway, embedders and he-matchers."""
        return self.keys_path / TASK_KEY

    @property
    def sentinel_key_path(self) -> Path:
        """AES key sealing the sentinels' seeds and choosing their slots: the gateway only."""
        return self.keys_path / SENTINEL_KEY

    @property
    def gallery_keys_path(self) -> Path:
        """The secret keys of galleries with keys of their own, one file each: the gateway only."""
        return self.keys_path / "galleries"

    @property
    def models_path(self) -> Path:
        return self.model_dir or self.var_dir / "models"

    @property
    def shared_models_dir(self) -> Path:
        return self.shared_dir / "models"

    @property
    def data_dir(self) -> Path:
        return self.shared_dir / "data"


class SettingError(ValueError):
    """A setting has a value the service refuses to start with; the message names the variable."""


def check_secrets(settings: Settings) -> None:
    """Raise :class:`SettingError` for an operator-chosen secret shorter than :data:`MIN_SECRET_LENGTH`."""
    for name in ("bootstrap_api_key", "metrics_token"):
        value = getattr(settings, name)
        if value and len(value) < MIN_SECRET_LENGTH:
            raise SettingError(
                f"VEILFACE_{name.upper()} has {len(value)} characters, fewer than {MIN_SECRET_LENGTH}: "
                "choose a long random one (python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )


def _parse(kind: type | str, raw: str):
    kind = str(kind)
    if "bool" in kind:
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if "int" in kind:
        return int(raw)
    if "float" in kind:
        return float(raw)
    if "Path" in kind:
        return Path(raw) if raw else None
    return raw


def load_settings(environ: dict[str, str] | None = None, **overrides) -> Settings:
    """Build :class:`Settings` from ``environ`` (default ``os.environ``), then ``overrides``."""
    environ = os.environ if environ is None else environ
    values = {}
    for f in fields(Settings):
        raw = environ.get(f"VEILFACE_{f.name.upper()}")
        if raw is not None:
            values[f.name] = _parse(f.type, raw)
    values.update(overrides)
    return Settings(**values)


def path_environ(settings: Settings) -> dict[str, str]:
    """The ``VEILFACE_*`` variables of every folder setting, made absolute.

    A relative folder in the environment is relative to the current directory; child processes
    started in other folders (gunicorn and the workers run in ``services/*``) get these instead.
    """
    return {
        f"VEILFACE_{f.name.upper()}": str(Path(value).absolute())
        for f in fields(Settings)
        if "Path" in str(f.type) and (value := getattr(settings, f.name)) is not None
    }
