"""``headwater token add|list|revoke`` (read tokens of the query API and dashboard) and
``headwater identity token RAW`` (the stored token of a raw identifier)."""

from __future__ import annotations

import click

from headwater.cli.options import open_home
from headwater.cli.output import emit, format_option, print_rows


@click.group("token")
def token() -> None:
    """Read tokens of the query API and dashboard, with a role: viewer, analyst or admin."""


@token.command("add")
@click.option("--role", type=click.Choice(["viewer", "analyst", "admin"]), required=True,
              help="viewer: metric endpoints and dashboard; analyst: also SQL over silver and gold; admin: also bronze and hw_token().")
@click.option("--name", default=None, help="Name of the token in listings and for revoke (default: <role>-<fingerprint>).")
def token_add(role: str, name: str | None) -> None:
    """Create a read token and print it alone (for scripts: TOKEN=$(headwater token add --role viewer)).

    This is the only time the token is shown: only its digest is stored."""
    from headwater.serve.access import Role, TokenStore

    entry, secret = TokenStore(open_home()).add(Role.parse(role), name)
    click.echo(f"read token {entry.name!r} ({entry.role}, fingerprint {entry.fingerprint}): shown once, keep it", err=True)
    click.echo(secret)


@token.command("list")
@format_option
def token_list(fmt: str) -> None:
    """List the read tokens: name, role, fingerprint (printf %s "$TOKEN" | sha256sum | cut -c1-12),
    created and revoked times. Tokens themselves are never stored."""
    from headwater.serve.access import TokenStore

    rows = [t.listing() for t in TokenStore(open_home()).tokens()]
    emit(rows, fmt, table=lambda r: print_rows(["name", "role", "fingerprint", "created", "revoked"], r))


@token.command("revoke")
@click.argument("name")
@format_option
def token_revoke(name: str, fmt: str) -> None:
    """Revoke the read token NAME: requests carrying it are refused (401) from the next one on;
    prints the revoked entry."""
    from headwater.serve.access import TokenStore

    emit(TokenStore(open_home()).revoke(name).listing(), fmt)


@click.group("identity")
def identity() -> None:
    """Identifiers: the lake stores HMAC tokens of user ids, anonymous ids and emails, never the raw values."""


@identity.command("token")
@click.argument("raw")
@format_option
def identity_token_cmd(raw: str, fmt: str) -> None:
    """Print the token the lake stores for the raw identifier RAW (a user id, anonymous id or
    email), to join headwater's tables with your own: WHERE person_id = '<token>'. Needs the
    home's HMAC key (the command line is admin); SQL sessions of admin tokens have hw_token(raw)."""
    from headwater.serve.access import identity_token

    emit({"token": identity_token(open_home(), raw)}, fmt, table=lambda doc: click.echo(doc["token"]))
