"""``headwater schema``: event contracts (JSON Schema per event name) in the schema registry.

    headwater schema register "Order Completed" order_completed.json [--mode FULL]
    headwater schema check "Order Completed" order_completed_v2.json
    headwater schema list [--format table|csv|json]
    headwater schema mode "Order Completed" [FORWARD]
    headwater schema show "Order Completed" [--version N] [--format table|csv|json]

What a source does with events of names without a contract is its policy:
``headwater source policy NAME --unregistered accept|reject``.

Exit code 0 on success; 2 with a message naming the field and the rule when a schema is
invalid, 4 when it is incompatible with the registered versions (``check`` too: "would it be
accepted, and why not"), 3 for an unknown subject or version (:mod:`headwater.cli.errors`).
"""

from __future__ import annotations

import json
from contextlib import contextmanager

import click

from headwater.cli.options import open_home
from headwater.cli.output import emit, format_option, print_rows
from headwater.config import Home
from headwater.errors import InvalidInputError, NotFoundError
from headwater.registry import compat

MODES = click.Choice(compat.MODES, case_sensitive=False)


@contextmanager
def _registry(home: Home | None = None):
    """The registry of ``home`` (default: the command's), closed afterwards."""
    from headwater.registry.registry import Registry

    registry = Registry.from_home(home or open_home())
    try:
        yield registry
    finally:
        registry.close()


def _load(path: str) -> object:
    with click.open_file(path, "r", encoding="utf-8") as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidInputError(f"{path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}", field="FILE") from None


@click.group("schema")
def schema() -> None:
    """Event contracts: a JSON Schema (Draft 2020-12) per event name, versioned, with a
    compatibility mode per event name (BACKWARD by default, as in Confluent Schema Registry)."""


@schema.command("register")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--mode", type=MODES, default=None, help="Set NAME's compatibility mode first (kept for later versions).")
def register(name: str, file: str, mode: str | None) -> None:
    """Register FILE (JSON Schema of the event's properties; - for stdin) as NAME's next version."""
    from headwater.registry.registry import table_name

    document = _load(file)
    with _registry() as registry:
        version, created = registry.register(name, document, mode)
        what = "registered" if created else "unchanged: identical to"
        click.echo(f"{name!r} {what} version {version.version} ({registry.mode(name)}); typed table silver.{table_name(name)}")


@schema.command("check")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--mode", type=MODES, default=None, help="Check under this mode instead of NAME's own.")
def check(name: str, file: str, mode: str | None) -> None:
    """Would FILE be accepted as NAME's next version? Exit 4 with the reasons if not."""
    from headwater.registry.registry import IncompatibleSchemaError

    document = _load(file)
    with _registry() as registry:
        result = registry.check(name, document, mode)
    if not result.compatible:
        raise IncompatibleSchemaError(result)
    click.echo(result.message())


@schema.command("mode")
@click.argument("name")
@click.argument("mode", type=MODES, required=False)
def mode(name: str, mode: str | None) -> None:
    """Show NAME's compatibility mode, or set it to MODE."""
    with _registry() as registry:
        if mode:
            registry.set_mode(name, mode)
        click.echo(registry.mode(name))


@schema.command("show")
@click.argument("name")
@click.option("--version", "version", type=int, default=None, help="A version number (default: the latest).")
@format_option
def show(name: str, version: int | None, fmt: str) -> None:
    """Print a version of NAME's schema: the JSON Schema document itself with --format json
    (ready for `schema register`), indented under a title line with the default table."""
    with _registry() as registry:
        versions = registry.versions(name)
    chosen = [v for v in versions if version is None or v.version == version]
    if not chosen:
        raise NotFoundError(f"{name!r}: no version {version}" if versions and version else f"{name!r}: not registered", field="subject")
    v = chosen[-1]

    def text(doc: dict) -> None:
        click.echo(f"{name!r} version {v.version}, registered {v.registered_at.isoformat()}")
        click.echo(json.dumps(doc, indent=2))

    emit(v.schema, fmt, table=text)


@schema.command("list")
@format_option
def list_(fmt: str) -> None:
    """Registered event names (latest version, mode, typed table) and the event names seen
    without a contract; ``unvalidated_events`` counts bronze events stored with a null
    schema_version (accepted unregistered, or received before the name was registered)."""
    from headwater.registry.registry import table_name

    home = open_home()
    with _registry(home) as registry:
        rows = [
            {
                "subject": s,
                "registered": True,
                "version": versions[-1].version,
                "versions": [v.version for v in versions],
                "compatibility": registry.mode(s),
                "table": f"silver.{table_name(s)}",
                "registered_at": versions[-1].registered_at,
            }
            for s in registry.subjects()
            if (versions := registry.versions(s))
        ]
    counts = _unvalidated(home)
    for row in rows:
        row["unvalidated_events"] = counts.pop(row["subject"], 0)
    rows += [
        {"subject": name, "registered": False, "version": None, "versions": [], "compatibility": None,
         "table": None, "registered_at": None, "unvalidated_events": n}
        for name, n in sorted(counts.items())
    ]
    emit(rows, fmt, table=lambda rows: print_rows(["subject", "version", "compatibility", "table", "unvalidated_events"], rows))


def _unvalidated(home: Home) -> dict[str, int]:
    """Track events per name stored without a schema version (bronze.events), ``{}`` if none."""
    from headwater.lake import sql
    from headwater.lake.store import Lake

    lake = Lake.of(home)
    if not lake.exists("bronze.events"):
        return {}
    result = sql.query(
        lake,
        "SELECT event_name, count(*) AS n FROM bronze.events "
        "WHERE schema_version IS NULL AND event_type = 'track' AND event_name IS NOT NULL GROUP BY 1",
    )
    return dict(zip(result.column("event_name").to_pylist(), result.column("n").to_pylist()))
