"""The ``veilface`` command line (also ``python -m veilface``): database, keys, API keys, galleries,
models, eval, and the client of client-key galleries.

Key commands run where the gateway runs: they write the secret key file. The server's modules
(the store, SQLAlchemy) are imported by the commands that use them, so that ``veilface client``
runs where only the ``client`` extra is installed.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import click

from veilface import errors
from veilface.config import Settings, load_settings
from veilface.models.registry import ModelRegistry
from veilface.models.version import Ensemble
from veilface.store import API_KEY_SCOPES


def _sessions(settings: Settings):
    from veilface.store.db import make_engine, require_schema, session_factory

    engine = make_engine(settings)
    require_schema(engine)
    return session_factory(engine)


@click.group()
@click.pass_context
def main(ctx: click.Context) -> None:
    """Veilface: face recognition on CKKS-encrypted templates."""
    ctx.obj = load_settings()


@main.group()
def db() -> None:
    """The ciphertext store's schema and the services' accounts."""


@db.command("migrate")
@click.pass_obj
def db_migrate(settings: Settings) -> None:
    """Create the missing tables; on MySQL/MariaDB also each service's account with only its rights.

    Run it with an administrator's VEILFACE_DATABASE_URL (one that may create tables, accounts
    and grants) before the stack starts and after each upgrade; it is idempotent. Each account
    comes from VEILFACE_GATEWAY_DATABASE_URL, VEILFACE_EMBEDDER_DATABASE_URL and
    VEILFACE_MATCHER_DATABASE_URL (user and password); the rights are in veilface/store/privileges.py.
    """
    from veilface.store.db import create_schema, make_engine
    from veilface.store.privileges import apply_grants

    engine = make_engine(settings)
    create_schema(engine)
    click.echo(f"schema: {engine.dialect.name} database {engine.url.database} is up to date")
    accounts = settings.service_database_urls
    if not accounts:
        return
    if engine.dialect.name not in ("mysql", "mariadb"):
        click.echo(f"accounts: {engine.dialect.name} has none; every process holds every right")
        return
    try:
        with engine.begin() as conn:
            users = apply_grants(conn, accounts)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    for service, user in users.items():
        click.echo(f"account {user}: the {service}'s rights only")


@main.group()
def keys() -> None:
    """CKKS key set, queue and task keys, and API keys."""


@keys.command("init")
@click.option(
    "--force", is_flag=True, help="Replace an existing key set (every template must be re-enrolled)."
)
@click.pass_obj
def keys_init(settings: Settings, force: bool) -> None:
    """Create the CKKS key set (secret.ctx for the gateway, public.ctx for workers), queue.key
    (gateway and embedders) and task.key (gateway and every worker); missing files only."""
    from veilface.crypto.keyfiles import generate_message_keys
    from veilface.crypto.params import DEFAULT_PARAMS
    from veilface.crypto.secret import generate_keyset

    if settings.secret_context_path.exists() and not force:
        click.echo(f"key set already present in {settings.keys_path} (use --force to replace it)")
    else:
        fingerprint = generate_keyset(settings.keys_path, DEFAULT_PARAMS)
        click.echo(f"created key set {fingerprint} in {settings.keys_path}")
    generate_message_keys(settings.keys_path)


@keys.command("fingerprint")
@click.pass_obj
def keys_fingerprint(settings: Settings) -> None:
    """Print the fingerprint of the public context workers load."""
    from veilface.crypto.public import PublicContext

    click.echo(PublicContext.load(settings.public_context_path).fingerprint)


@keys.command("create-api-key")
@click.option("--name", default="cli", show_default=True)
@click.option(
    "--scope",
    type=click.Choice(API_KEY_SCOPES),
    default="admin",
    show_default=True,
    help="admin: any change; read: searches, decision and candidates above the threshold only; "
    "eval: searches with full-precision scores.",
)
@click.option("--gallery", default=None, help="Bind the key to one gallery.")
@click.option(
    "--compreface", is_flag=True, help="A CompreFace-style key: bound to --gallery, used as x-api-key."
)
@click.pass_obj
def keys_create_api_key(
    settings: Settings, name: str, scope: str, gallery: str | None, compreface: bool
) -> None:
    """Create an API key and print it (it is stored only as a hash).

    A ``--compreface`` key is shaped like a CompreFace service key (a random UUID), which
    some CompreFace clients check, and acts on its gallery through ``/api/v1``.
    """
    from veilface.store import apikeys
    from veilface.store.db import session_scope

    if compreface and not gallery:
        raise click.UsageError("--compreface needs --gallery")
    key = str(uuid.uuid4()) if compreface else None
    with session_scope(_sessions(settings)) as session:
        click.echo(apikeys.create_api_key(session, name, scope, gallery=gallery, key=key))


@keys.command("list-api-keys")
@click.pass_obj
def keys_list_api_keys(settings: Settings) -> None:
    """List API keys (never the keys themselves)."""
    from veilface.store import apikeys
    from veilface.store.db import session_scope

    with session_scope(_sessions(settings)) as session:
        for row in apikeys.list_api_keys(session):
            state = "revoked" if row.revoked_at else "live"
            click.echo(f"{row.id}\t{row.name}\t{row.scope}\t{row.gallery or '-'}\t{state}")


@keys.command("revoke-api-key")
@click.argument("key_id", type=int)
@click.pass_obj
def keys_revoke_api_key(settings: Settings, key_id: int) -> None:
    """Revoke an API key by id."""
    from veilface.store import apikeys
    from veilface.store.db import session_scope

    with session_scope(_sessions(settings)) as session:
        apikeys.revoke_api_key(session, key_id)
    click.echo(f"revoked {key_id}")


@keys.command("rotate")
@click.option(
    "--keep-old",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Move the old key files here instead of deleting them (rollback; erasure is then incomplete).",
)
@click.confirmation_option(prompt="Replace the key set and drop every template (all must be enrolled again)?")
@click.pass_obj
def keys_rotate(settings: Settings, keep_old: Path | None) -> None:
    """New CKKS key set, queue key and task key; every template is dropped and must be enrolled again.

    Run it where the gateway runs, then give the workers the new public.ctx and task.key
    (embedders also queue.key) and restart the gateway and every worker. See docs/reliability.md.
    """
    from veilface.admin.rotation import rotate_keys
    from veilface.crypto.keyfiles import generate_message_keys
    from veilface.crypto.params import DEFAULT_PARAMS
    from veilface.crypto.secret import generate_keyset

    def generate(folder: Path) -> str:
        fingerprint = generate_keyset(folder, DEFAULT_PARAMS)
        generate_message_keys(folder)
        return fingerprint

    rotation = rotate_keys(settings, _sessions(settings), generate, keep_old=keep_old)
    click.echo(f"new key set {rotation.new_fingerprint} in {settings.keys_path}")
    old = rotation.old_fingerprint[:12] if rotation.old_fingerprint else "none"
    kept = f"moved to {rotation.old_keys_kept_in}" if rotation.old_keys_kept_in else "deleted"
    click.echo(f"old key set {old}: {kept}")
    click.echo(
        f"dropped {rotation.templates_dropped} templates; "
        f"{rotation.subjects_to_reenroll} subjects must be enrolled again"
    )
    click.echo(
        "next: copy public.ctx and task.key (and queue.key for embedders) to the workers, restart everything"
    )


@main.command("backup")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--keys-out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also copy the key files into this folder; store it apart from the database backup.",
)
@click.pass_obj
def backup(settings: Settings, out: Path, keys_out: Path | None) -> None:
    """Write a consistent snapshot of the database to the empty folder OUT (ciphertexts only)."""
    from veilface.admin import backup as backups
    from veilface.store.db import make_engine, session_factory, session_scope
    from veilface.store.keysets import deployment_key_set

    engine = make_engine(settings)
    with session_scope(session_factory(engine)) as session:
        fingerprint = deployment_key_set(session)
    manifest = backups.backup_database(engine, out, key_fingerprint=fingerprint)
    rows = sum(t["rows"] for t in manifest["tables"].values())
    click.echo(f"database: {rows} rows in {len(manifest['tables'])} tables -> {out}")
    if keys_out is None:
        click.echo("keys not included: back them up separately (--keys-out), never beside the database")
    else:
        click.echo(f"keys: key set {backups.backup_keys(settings.keys_path, keys_out)[:12]} -> {keys_out}")


@main.command("restore")
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--keys-from",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Also install the key files backed up in this folder.",
)
@click.option("--force", is_flag=True, help="Replace a non-empty database or a different key set.")
@click.pass_obj
def restore(settings: Settings, src: Path, keys_from: Path | None, force: bool) -> None:
    """Load the database backup SRC into the configured database (and the keys); stop the stack first."""
    from veilface.admin import backup as backups
    from veilface.crypto.public import fingerprint_of
    from veilface.store.db import make_engine

    expected = backups.read_manifest(src).get("key_fingerprint")
    if keys_from is not None:
        installed = backups.restore_keys(keys_from, settings.keys_path, force=force)
        click.echo(f"keys: key set {installed[:12]} -> {settings.keys_path}")
    public = settings.public_context_path
    current = fingerprint_of(public.read_bytes()) if public.is_file() else None
    if expected and current != expected and not force:
        raise click.ClickException(
            f"the backup was made under key set {expected[:12]}, the key files here are "
            f"{(current or 'missing')[:12]}: restore its keys with --keys-from (or --force)"
        )
    restored = backups.restore_database(make_engine(settings), src, force=force)
    click.echo(f"database: {sum(restored.values())} rows restored from {src}")


@main.group()
def galleries() -> None:
    """Inspect and manage galleries."""


@galleries.command("list")
@click.pass_obj
def galleries_list(settings: Settings) -> None:
    """Galleries with subject and template counts, as JSON."""
    from veilface.store import galleries as store
    from veilface.store.db import session_scope

    with session_scope(_sessions(settings)) as session:
        click.echo(json.dumps(store.list_galleries(session), indent=2))


@galleries.command("delete")
@click.argument("name")
@click.confirmation_option(prompt="Delete the gallery and every ciphertext in it?")
@click.pass_obj
def galleries_delete(settings: Settings, name: str) -> None:
    """Delete a gallery with all its subjects, templates and blocks (and its own secret key)."""
    from veilface.admin.gallery_keys import delete_gallery
    from veilface.crypto.secret import GalleryKeyring

    destroyed = delete_gallery(_sessions(settings), GalleryKeyring(settings.gallery_keys_path), name)
    click.echo(f"deleted {name}" + (" and destroyed its secret key" if destroyed else ""))


@galleries.command("rotate-keys")
@click.argument("name")
@click.confirmation_option(prompt="Give the gallery a new key set and drop its templates (to enroll again)?")
@click.pass_obj
def galleries_rotate_keys(settings: Settings, name: str) -> None:
    """New key set for gallery NAME (one with keys of its own) alone: its templates, sentinels and
    blocks are dropped, its subjects kept (to be enrolled again), its old secret key destroyed.

    Run it where the gateway runs (it writes the new secret key file); no restart is needed: the
    workers load the new public key set with the next task. Prints JSON.
    """
    from dataclasses import asdict

    from veilface.admin.gallery_keys import rotate_gallery_keys
    from veilface.crypto.secret import GalleryKeyring

    keyring = GalleryKeyring(settings.gallery_keys_path)
    rotation = rotate_gallery_keys(_sessions(settings), keyring, name)
    click.echo(json.dumps(asdict(rotation), indent=2))


@galleries.command("repack")
@click.argument("name", required=False)
@click.pass_obj
def galleries_repack(settings: Settings, name: str | None) -> None:
    """Re-lay out packed blocks (of NAME, or of every gallery) in the current layout.

    Blocks written before the baby-step giant-step layout, or for a smaller gallery, keep
    working but cost a query more rotations; this rewrites them with the public keys only,
    one block per transaction (a few seconds each at most), and leaves blocks already laid out
    alone, so it can be stopped and run again. Matchers reload rewritten blocks at their next
    search; the matchers' compaction does the same after each fold.
    """
    from sqlalchemy import select

    from veilface.crypto.public import PublicContext
    from veilface.search.compaction import repack_gallery
    from veilface.store import galleries as store
    from veilface.store.db import session_scope
    from veilface.store.keysets import PublicContexts
    from veilface.store.models import Gallery

    ctx = PublicContext.load(settings.public_context_path)
    sessions = _sessions(settings)
    key_sets = PublicContexts(sessions, size=1)
    with session_scope(sessions) as session:
        if name:
            chosen = [store.get_gallery(session, name)]
        else:
            chosen = session.scalars(select(Gallery).order_by(Gallery.name)).all()
        targets = [(gallery.name, gallery.id, gallery.key_fingerprint) for gallery in chosen]
    for gallery_name, gallery_id, key_set in targets:
        context = ctx if key_set is None else key_sets.get(key_set)  # a gallery's own public keys
        repacked, blocks = repack_gallery(context, sessions, gallery_id)
        click.echo(f"{gallery_name}: {repacked} of {blocks} blocks repacked")


@main.group()
def models() -> None:
    """The model registry."""


@models.command("list")
@click.pass_obj
def models_list(settings: Settings) -> None:
    """Registered model versions; the active one is starred."""
    registry = ModelRegistry(settings)
    active = registry.active().version
    for model in registry.versions():
        mark = "*" if model.version == active else " "
        network = model.network
        source = " + ".join(network.versions) if isinstance(network, Ensemble) else network.file
        click.echo(f"{mark} {model.version}\tdim={model.dim}\tthreshold={model.threshold}\t{source}")


@models.command("show")
@click.argument("version")
@click.pass_obj
def models_show(settings: Settings, version: str) -> None:
    """The whole description of VERSION as JSON: threshold, networks, files and preprocessing."""
    click.echo(json.dumps(ModelRegistry(settings).get(version).as_dict(), indent=2))


@models.command("activate")
@click.argument("version")
@click.pass_obj
def models_activate(settings: Settings, version: str) -> None:
    """Make VERSION the model new templates and probes are made with."""
    model = ModelRegistry(settings).activate(version)
    click.echo(f"active model: {model.version}; embedders load it at their next task")


@models.command("fit-projection")
@click.argument("name")
@click.option("--dim", type=int, default=128, show_default=True, help="Projected dimension (a power of 2).")
@click.option("--base", "base_version", default=None, help="Model version to project (default: the active).")
@click.option(
    "--identities", default=250, show_default=True, help="Fit on CFP identities 001 to N (N <= 250)."
)
@click.option("--processes", default=2, show_default=True, help="Worker processes (one thread each).")
@click.pass_obj
def models_fit_projection(
    settings: Settings, name: str, dim: int, base_version: str | None, identities: int, processes: int
) -> None:
    """Fit the compact-template projection NAME on CFP identities 001-250 and calibrate its threshold.

    Galleries opt in with ``PUT /v1/galleries/{gallery} {"projection": NAME}``; their templates carry
    the model version ``<base>:NAME``.
    """
    from veilface.eval.compact import fit_projection

    base = base_version or ModelRegistry(settings).active().version
    projection, calibration = fit_projection(
        settings, name, base, dim, identities=identities, processes=processes
    )
    summary = {"version": projection.version, "dim": projection.dim, "calibration": calibration.as_dict()}
    click.echo(json.dumps(summary))


@main.group("eval")
def eval_group() -> None:
    """Accuracy on face data sets, through the production face path (see docs/accuracy.md)."""


@eval_group.command("pairs")
@click.option(
    "--pairs",
    "pairs_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Lines '[fold] path1 path2 label' (1 same, 0 different), LFW's pairs.txt or CFP's pairs_F*.txt.",
)
@click.option(
    "--root",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Image folder.",
)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Report (JSON).")
@click.option(
    "--model",
    default=None,
    help="Model version, VERSION@noflip, or an ensemble A+B; default: the active version.",
)
@click.option("--encrypted", is_flag=True, help="Also score every pair under CKKS encryption and compare.")
@click.option("--processes", default=2, show_default=True, help="Worker processes (one thread each).")
@click.option("--detector-size", type=int, default=None, help="SCRFD input side (production: 640).")
@click.option("--pad", type=float, default=0.0, show_default=True, help="Border added before detection.")
@click.pass_obj
def eval_pairs(
    settings: Settings,
    pairs_file: Path,
    root: Path,
    out: Path,
    model: str | None,
    encrypted: bool,
    processes: int,
    detector_size: int | None,
    pad: float,
) -> None:
    """10-fold accuracy, TAR at FAR 1e-3 and 1e-4 and failures to detect on a pair list.

    Folds come from the file when it has them, else pair i is in fold i % 10 + 1. Writes OUT and,
    beside it, OUT's ROC curve and score histogram as PNG files.
    """
    from veilface.eval.pairs import evaluate_pair_file
    from veilface.eval.protocols import read_pair_file
    from veilface.eval.variants import Variant

    try:
        pairs = read_pair_file(pairs_file, root)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--pairs'") from exc
    if missing := pairs.missing_images():
        raise click.BadParameter(
            f"{len(missing)} image(s) not found under {root}, the first: {missing[0]}", param_hint="'--pairs'"
        )
    variant = Variant.parse(
        model or ModelRegistry(settings).active().version, default_flip=settings.flip_fusion
    )
    report = evaluate_pair_file(
        settings,
        pairs,
        variant,
        out,
        encrypted=encrypted,
        processes=processes,
        detector_size=detector_size,
        pad=pad,
    )
    tar = ", ".join(f"TAR@FAR{far} {v['tar']:.4f}" for far, v in report["tar_at_far"].items())
    click.echo(
        f"{variant.name}: {report['pairs']} pairs, accuracy {report['accuracy']:.4%} "
        f"± {report['accuracy_std']:.4%}, {tar}, images without a face {report['detection']['no_face']}"
    )
    if encrypted:
        enc = report["encrypted"]
        click.echo(
            f"encrypted: {enc['decision_disagreements_protocol']} decision disagreements, "
            f"max |encrypted - plaintext| {enc['max_abs_difference']:.2e}"
        )
    click.echo(f"report: {out}")


@main.group()
def client() -> None:
    """The client of client-key galleries: it holds the key set; the server sees no face, template
    or score (see docs/privacy.md)."""


@client.group("keys")
def client_keys() -> None:
    """The client's own key set."""


@client_keys.command("init")
@click.option("--dir", "folder", required=True, type=click.Path(file_okay=False, path_type=Path))
def client_keys_init(folder: Path) -> None:
    """Create the client's key set in DIR: secret.ctx and public.ctx, both 0600; never overwrites."""
    from veilface.client.keys import init_keys

    click.echo(f"created client key set {init_keys(folder)} in {folder}")


def _gallery_options(command):
    """The options every gallery command takes: the server, the API key, the key folder, the gallery."""
    for option in reversed(
        (
            click.option("--url", required=True, help="The gateway, e.g. https://faces.example.org."),
            click.option("--api-key", required=True, envvar="VEILFACE_API_KEY", help="Or VEILFACE_API_KEY."),
            click.option(
                "--keys", "keys_dir", required=True, type=click.Path(file_okay=False, path_type=Path)
            ),
            click.option("--gallery", required=True),
        )
    ):
        command = option(command)
    return command


def _private_gallery(settings: Settings, url: str, api_key: str, keys_dir: Path, gallery: str):
    from veilface.client.api import GalleryApi
    from veilface.client.gallery import PrivateGallery
    from veilface.client.keys import ClientKeys

    return PrivateGallery(GalleryApi(url, api_key), ClientKeys.load(keys_dir), gallery, settings)


def _image(path: Path):
    from veilface.client.gallery import Image

    return Image(path.read_bytes(), str(path))


_IMAGE = click.Path(exists=True, dir_okay=False, path_type=Path)


@client.command("create-gallery")
@_gallery_options
@click.pass_obj
def client_create_gallery(settings: Settings, url: str, api_key: str, keys_dir: Path, gallery: str) -> None:
    """Create GALLERY on the server under the client's public key set; print the server's answer."""
    from veilface.client.api import GalleryApi
    from veilface.client.gallery import PrivateGallery
    from veilface.client.keys import ClientKeys

    answer = PrivateGallery.create(GalleryApi(url, api_key), ClientKeys.load(keys_dir), gallery, settings)
    click.echo(json.dumps(answer, indent=2))


@client.command("enroll")
@_gallery_options
@click.option("--subject", required=True)
@click.option("--main-face", is_flag=True, help="Enroll the main face of an image with several.")
@click.argument("images", nargs=-1, required=True, type=_IMAGE)
@click.pass_obj
def client_enroll(
    settings: Settings,
    url: str,
    api_key: str,
    keys_dir: Path,
    gallery: str,
    subject: str,
    main_face: bool,
    images: tuple[Path, ...],
) -> None:
    """Enroll one template of SUBJECT per image, analysed and encrypted here; print the stored ids."""
    private = _private_gallery(settings, url, api_key, keys_dir, gallery)
    answer = private.enroll(subject, [_image(path) for path in images], main_face=main_face)
    click.echo(json.dumps(answer))


@client.command("identify")
@_gallery_options
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(1, 100))
@click.argument("image", type=_IMAGE)
@click.pass_obj
def client_identify(
    settings: Settings, url: str, api_key: str, keys_dir: Path, gallery: str, top_k: int, image: Path
) -> None:
    """Every face of IMAGE with its candidates and match, decrypted and decided here, as JSON."""
    private = _private_gallery(settings, url, api_key, keys_dir, gallery)
    click.echo(json.dumps(private.identify(_image(image), top_k=top_k)))


@client.command("verify")
@_gallery_options
@click.option("--subject", required=True)
@click.argument("image", type=_IMAGE)
@click.pass_obj
def client_verify(
    settings: Settings, url: str, api_key: str, keys_dir: Path, gallery: str, subject: str, image: Path
) -> None:
    """Whether the main face of IMAGE is SUBJECT, decided here, as JSON."""
    private = _private_gallery(settings, url, api_key, keys_dir, gallery)
    click.echo(json.dumps(private.verify(subject, _image(image))))


#: Modules of the ``server`` extra: a command that needs one, run where only the client is
#: installed, says so in one line.
SERVER_MODULES = ("flask", "celery", "kombu", "redis", "sqlalchemy", "gunicorn", "prometheus_client")


def run() -> None:
    """Entry point: expected errors print one line and exit 2, never a traceback."""
    try:
        main(standalone_mode=True)
    except errors.VeilfaceError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(2)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in SERVER_MODULES:
            raise
        click.echo(
            f"error: this command needs the server's modules ({exc.name}): pip install 'veilface[server]'",
            err=True,
        )
        sys.exit(2)
