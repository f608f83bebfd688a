"""The ``veilface`` command line (also ``python -m veilface``): keys, API keys, galleries, models.

Key commands run where the gateway runs: they write the secret key file.
"""

from __future__ import annotations

import json
import sys
import uuid

import click

from veilface import errors
from veilface.config import Settings, load_settings
from veilface.registry import ModelRegistry
from veilface.store import apikeys
from veilface.store import galleries as store
from veilface.store.db import create_schema, make_engine, session_factory, session_scope


def _sessions(settings: Settings):
    engine = make_engine(settings)
    create_schema(engine)
    return session_factory(engine)


@click.group()
@click.pass_context
def main(ctx: click.Context) -> None:
    """Veilface: face recognition on CKKS-encrypted templates."""
    ctx.obj = load_settings()


@main.group()
def keys() -> None:
    """CKKS key set, queue key and API keys."""


@keys.command("init")
@click.option(
    "--force", is_flag=True, help="Replace an existing key set (every template must be re-enrolled)."
)
@click.pass_obj
def keys_init(settings: Settings, force: bool) -> None:
    """Create the CKKS key set (secret.ctx for the gateway, public.ctx for workers) and queue.key."""
    from veilface.crypto.params import DEFAULT_PARAMS
    from veilface.crypto.secret import generate_keyset
    from veilface.payload import generate_queue_key

    if settings.secret_context_path.exists() and not force:
        click.echo(f"key set already present in {settings.keys_path} (use --force to replace it)")
    else:
        fingerprint = generate_keyset(settings.keys_path, DEFAULT_PARAMS)
        click.echo(f"created key set {fingerprint} in {settings.keys_path}")
    generate_queue_key(settings.queue_key_path)


@keys.command("fingerprint")
@click.pass_obj
def keys_fingerprint(settings: Settings) -> None:
    """Print the fingerprint of the public context workers load."""
    from veilface.crypto.public import PublicContext

    click.echo(PublicContext.load(settings.public_context_path).fingerprint)


@keys.command("create-api-key")
@click.option("--name", default="cli", show_default=True)
@click.option("--scope", type=click.Choice(["admin", "read"]), default="admin", show_default=True)
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
    if compreface and not gallery:
        raise click.UsageError("--compreface needs --gallery")
    key = str(uuid.uuid4()) if compreface else None
    with session_scope(_sessions(settings)) as session:
        click.echo(apikeys.create_api_key(session, name, scope, gallery=gallery, key=key))


@keys.command("list-api-keys")
@click.pass_obj
def keys_list_api_keys(settings: Settings) -> None:
    """List API keys (never the keys themselves)."""
    with session_scope(_sessions(settings)) as session:
        for row in apikeys.list_api_keys(session):
            state = "revoked" if row.revoked_at else "live"
            click.echo(f"{row.id}\t{row.name}\t{row.scope}\t{row.gallery or '-'}\t{state}")


@keys.command("revoke-api-key")
@click.argument("key_id", type=int)
@click.pass_obj
def keys_revoke_api_key(settings: Settings, key_id: int) -> None:
    """Revoke an API key by id."""
    with session_scope(_sessions(settings)) as session:
        apikeys.revoke_api_key(session, key_id)
    click.echo(f"revoked {key_id}")


@main.group()
def galleries() -> None:
    """Inspect and manage galleries."""


@galleries.command("list")
@click.pass_obj
def galleries_list(settings: Settings) -> None:
    """Galleries with subject and template counts, as JSON."""
    with session_scope(_sessions(settings)) as session:
        click.echo(json.dumps(store.list_galleries(session), indent=2))


@galleries.command("delete")
@click.argument("name")
@click.confirmation_option(prompt="Delete the gallery and every ciphertext in it?")
@click.pass_obj
def galleries_delete(settings: Settings, name: str) -> None:
    """Delete a gallery with all its subjects, templates and blocks."""
    with session_scope(_sessions(settings)) as session:
        store.delete_gallery(session, store.get_gallery(session, name))
    click.echo(f"deleted {name}")


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
        click.echo(f"{mark} {model.version}\tdim={model.dim}\tthreshold={model.threshold}\t{model.file}")


@models.command("activate")
@click.argument("version")
@click.pass_obj
def models_activate(settings: Settings, version: str) -> None:
    """Make VERSION the model new templates and probes are made with."""
    model = ModelRegistry(settings).activate(version)
    click.echo(f"active model: {model.version}; embedders pick it up when they restart")


def run() -> None:
    """Entry point: expected errors print one line and exit 2, never a traceback."""
    try:
        main(standalone_mode=True)
    except errors.VeilfaceError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(2)
