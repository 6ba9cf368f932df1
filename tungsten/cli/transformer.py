"""``tungsten transformer``: run the schema transformer as its own process on a config store."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import TYPE_CHECKING

import click

from tungsten.cli.common import env_names, fail, setup_logging, stop_on_signals

if TYPE_CHECKING:
    from tungsten.transformer.service import Transformer


@click.command()
@click.option("--store", "store_url", default=None, envvar=env_names("STORE"),
              help="Config store URL: sqlite:///ABS/PATH "
                   "[default: sqlite:///<state dir>/config.db]")
@click.option("--holder", default=None, envvar=env_names("TRANSFORMER_HOLDER"),
              help="This transformer's name in the lease [default: HOSTNAME:PID].")
@click.option("--lease", "lease_s", type=click.FloatRange(min=0.5), default=6.0,
              show_default=True, help="Lease length in seconds: a standby takes over at most "
                                      "this long after the active transformer dies.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True, envvar=env_names("LOG_LEVEL"),
              help="How much to log (structured, to stderr).")
def transformer(store_url: str | None, holder: str | None, lease_s: float,
                log_level: str) -> None:
    """Derive routing instances' route targets, connections and ACLs from the config.

    Several may run on one store: one holds the lease and writes, the others stand by and
    take over when it stops renewing the lease.
    """
    from tungsten.api.core import ConfigApi
    from tungsten.cli.controller import default_store
    from tungsten.store import StoreError, open_store
    from tungsten.transformer.service import Transformer

    setup_logging(log_level)
    url = store_url or default_store()
    name = holder or f"{socket.gethostname()}:{os.getpid()}"
    try:
        api = ConfigApi(open_store(url))
    except StoreError as e:
        fail(str(e))
    click.echo(f"Tungsten transformer {name} on store {url}", err=True)
    asyncio.run(_run(Transformer(api, name, lease_s)))


async def _run(t: Transformer) -> None:
    stop = stop_on_signals()
    await t.run(stop)
