"""``headwater schema``: event contracts (JSON Schema per event name) in the schema registry.

    headwater schema register "Order Completed" order_completed.json [--mode FULL]
    headwater schema check "Order Completed" order_completed_v2.json
    headwater schema list [--format json]
    headwater schema mode "Order Completed" [FORWARD]
    headwater schema policy web [accept|reject]      (events of unregistered names, per source)
    headwater schema show "Order Completed" [--version N]

Exit code 0 on success; 1 with a message naming the field and the rule when a schema is
invalid or incompatible (``check`` too: "would it be accepted, and why not").
"""

from __future__ import annotations

import json
from contextlib import contextmanager

import click

from headwater.cli.output import to_json
from headwater.config import Home
from headwater.registry import compat

MODES = click.Choice(compat.MODES, case_sensitive=False)


@contextmanager
def _registry():
    """The home's registry; registry and store errors become clean CLI errors (exit 1)."""
    from headwater.registry.registry import Registry, RegistryError

    try:
        registry = Registry.from_home(Home.from_env())
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    try:
        yield registry
    except (RegistryError, ValueError) as e:  # ValueError: an unreadable registry file
        raise click.ClickException(str(e)) from None
    except Exception as e:  # e.g. psycopg.OperationalError: the registry database is unreachable
        if type(e).__module__.startswith("psycopg"):
            raise click.ClickException(f"schema registry database: {e}") from None
        raise
    finally:
        registry.close()


def _load(path: str) -> object:
    with click.open_file(path, "r", encoding="utf-8") as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise click.ClickException(f"{path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None


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
    """Would FILE be accepted as NAME's next version? Exit 1 with the reasons if not."""
    document = _load(file)
    with _registry() as registry:
        result = registry.check(name, document, mode)
    if not result.compatible:
        raise click.ClickException(result.message())
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


@schema.command("policy")
@click.argument("source")
@click.argument("policy", type=click.Choice(["accept", "reject"]), required=False)
def policy(source: str, policy: str | None) -> None:
    """Show or set what SOURCE's events of unregistered names get: accept (stored with a
    null schema_version, counted by `schema list`) or reject (schema_violation bad rows).
    A running collector applies a change within a second."""
    home = Home.from_env()
    try:
        found = home.update_source(source, unregistered_events=policy) if policy else {s.name: s for s in home.sources()}[source]
    except KeyError:
        raise click.ClickException(f"source {source!r}: no such source (see `headwater source list`)") from None
    click.echo(found.unregistered_events)


@schema.command("show")
@click.argument("name")
@click.option("--version", "version", type=int, default=None, help="A version number (default: the latest).")
def show(name: str, version: int | None) -> None:
    """Print a version of NAME's schema as JSON."""
    with _registry() as registry:
        versions = registry.versions(name)
    chosen = [v for v in versions if version is None or v.version == version]
    if not chosen:
        raise click.ClickException(f"{name!r}: no version {version}" if versions and version else f"{name!r}: not registered")
    click.echo(json.dumps(chosen[-1].schema, indent=2))


@schema.command("list")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def list_(fmt: str) -> None:
    """Registered event names (latest version, mode, typed table) and the event names seen
    without a contract; ``unvalidated_events`` counts bronze events stored with a null
    schema_version (accepted unregistered, or received before the name was registered)."""
    from headwater.registry.registry import table_name

    home = Home.from_env()
    with _registry() as registry:
        rows = [
            {
                "subject": s,
                "registered": True,
                "version": versions[-1].version,
                "versions": [v.version for v in versions],
                "compatibility": registry.mode(s),
                "table": f"silver.{table_name(s)}",
                "registered_at": versions[-1].registered_at.isoformat(),
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
    if fmt == "json":
        click.echo(to_json(rows))
        return
    for r in rows:
        if r["registered"]:
            click.echo(f"{r['subject']}\tv{r['version']}\t{r['compatibility']}\t{r['table']}\tunvalidated {r['unvalidated_events']}")
        else:
            click.echo(f"{r['subject']}\tunregistered\t\t\tunvalidated {r['unvalidated_events']}")


def _unvalidated(home: Home) -> dict[str, int]:
    """Track events per name stored without a schema version (bronze.events), ``{}`` if none."""
    from headwater.lake import tables
    from headwater.serve import catalog

    if not tables.exists(catalog.table_path(home, "bronze.events")):
        return {}
    result = catalog.query(
        home,
        "SELECT event_name, count(*) AS n FROM bronze.events "
        "WHERE schema_version IS NULL AND event_type = 'track' AND event_name IS NOT NULL GROUP BY 1",
    )
    return dict(zip(result.column("event_name").to_pylist(), result.column("n").to_pylist()))
