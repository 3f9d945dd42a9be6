"""``headwater source policy NAME``: show or change a source's PII and unregistered-event policy."""

from __future__ import annotations

import dataclasses

import click
import msgspec

from headwater.cli.output import to_json
from headwater.config import UNREGISTERED_POLICIES, Home


def _keys(_ctx, _param, value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(k.strip() for k in value.split(",") if k.strip())


@click.command("policy")
@click.argument("name")
@click.option("--tokenize", callback=_keys, help="Comma-separated keys whose values are HMAC-tokenised (replaces the list).")
@click.option("--drop", callback=_keys, help="Comma-separated keys removed (replaces the list).")
@click.option("--keep", callback=_keys, help="Comma-separated keys stored as sent, exempt from detection (replaces the list).")
@click.option("--detect-values/--no-detect-values", default=None, help="Tokenise emails, +phones and IPs found in any string.")
@click.option("--unregistered", type=click.Choice(UNREGISTERED_POLICIES), help="Events of names without a schema: accept or reject.")
def policy(name, tokenize, drop, keep, detect_values, unregistered) -> None:
    """Print source NAME's policies as JSON, after applying any option given.

    Keys match at any depth, lowercase, without a leading $ and without _ / - . The collector
    applies a change within a second."""
    home = Home.from_env()
    try:
        source = next(s for s in home.sources() if s.name == name)
    except StopIteration:
        raise click.ClickException(f"source {name!r}: no such source (see `headwater source list`)") from None
    changes = {k: v for k, v in {"tokenize": tokenize, "drop": drop, "keep": keep, "detect_values": detect_values}.items() if v is not None}
    if changes or unregistered:
        fields = {"pii": dataclasses.replace(source.pii, **changes)} if changes else {}
        if unregistered:
            fields["unregistered_events"] = unregistered
        source = home.update_source(name, **fields)
    out = msgspec.to_builtins(source)
    out.pop("write_key")
    click.echo(to_json(out))
