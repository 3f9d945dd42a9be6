"""``headwater source policy NAME``: show or change a source's PII and unregistered-event policy."""

from __future__ import annotations

import dataclasses

import click
import msgspec

from headwater.cli.options import open_home
from headwater.cli.output import emit, format_option
from headwater.config import UNREGISTERED_POLICIES
from headwater.errors import NotFoundError


def _keys(_ctx, _param, value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(k.strip() for k in value.split(",") if k.strip())


@click.command("policy")
@click.argument("name")
@click.option("--tokenize", callback=_keys, help="Comma-separated keys whose values are HMAC-tokenised (replaces the list).")
@click.option("--drop", callback=_keys, help="Comma-separated keys removed (replaces the list).")
@click.option("--keep", callback=_keys, help="Comma-separated keys stored as sent, exempt from detection (replaces the list).")
@click.option("--detect-values/--no-detect-values", default=None, help="Tokenise emails, +phones and IPs found in any string.")
@click.option("--unregistered", type=click.Choice(UNREGISTERED_POLICIES),
              help="Events of names without a registered contract: accept (stored with a null schema_version) "
                   "or reject (schema_violation bad rows).")
@format_option
def policy(name, tokenize, drop, keep, detect_values, unregistered, fmt) -> None:
    """Print source NAME's policies, after applying any option given.

    Keys match at any depth, lowercase, without a leading $ and without _ / - . A running
    collector applies a change within a second."""
    home = open_home()
    source = next((s for s in home.sources() if s.name == name), None)
    if source is None:
        raise NotFoundError(f"source {name!r}: no such source (see `headwater source list`)", field="source")
    changes = {k: v for k, v in {"tokenize": tokenize, "drop": drop, "keep": keep, "detect_values": detect_values}.items() if v is not None}
    if changes or unregistered:
        fields = {"pii": dataclasses.replace(source.pii, **changes)} if changes else {}
        if unregistered:
            fields["unregistered_events"] = unregistered
        source = home.update_source(name, **fields)
    out = msgspec.to_builtins(source)
    out.pop("key_digest")
    emit(out, fmt)
