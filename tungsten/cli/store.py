"""``tungsten store``: look after a config store offline (``check``: consistency)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import click

from tungsten.cli.common import env_names, fail


@click.group()
def store() -> None:
    """Inspect a config store directly (no controller needed)."""


@store.command()
@click.option("--store", "store_url", default=None, envvar=env_names("STORE"),
              help="Config store URL: sqlite:///ABS/PATH "
                   "[default: sqlite:///<state dir>/config.db]")
@click.option("--json", "as_json", is_flag=True,
              help='Print one JSON object: {"consistent", "objects", "revision", "problems"}.')
def check(store_url: str | None, as_json: bool) -> None:
    """Check that a store is consistent: refs, parents, fq_name, address and id claims.

    Exits 0 when consistent, 1 when problems were found, 2 when the store cannot be read.
    Safe while a controller is running on the store (it only reads).
    """
    from tungsten.api.fsck import check as check_report
    from tungsten.cli.controller import default_store
    from tungsten.store import StoreError, open_store

    url = store_url or default_store()
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        # Opening a SQLite path creates it: never conjure an empty store out of a typo.
        if path.startswith("/") and not Path(path).is_file():
            fail(f"no store at {path} (store URL {url})")
    try:
        st = open_store(url)
    except StoreError as e:
        fail(str(e))
    try:
        report = check_report(st)
    except (StoreError, sqlite3.Error) as e:
        fail(f"cannot read the store {url}: {e}")
    finally:
        st.close()
    if as_json:
        click.echo(json.dumps({"consistent": report.consistent, "objects": report.objects,
                               "revision": report.revision, "problems": report.problems}))
    elif report.consistent:
        click.echo(f"store is consistent ({report.objects} objects, "
                   f"revision {report.revision})")
    else:
        click.echo(f"store {url} has {len(report.problems)} problem(s) "
                   f"({report.objects} objects, revision {report.revision}):")
        for p in report.problems:
            click.echo(f"  - {p}")
    if not report.consistent:
        raise SystemExit(1)
