"""``tungsten controller``: serve the VNC config API."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import os
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import click
from aiohttp import web

from tungsten import __version__
from tungsten.cli.common import env_names, fail, setup_logging, stop_on_signals

DEFAULT_LISTEN = "127.0.0.1:8082"


def state_dir() -> Path:
    """Where Tungsten keeps its state: $TUNGSTEN_STATE_DIR (alias $CONTRAIL_STATE_DIR),
    else /var/lib/tungsten for root, else ~/.local/state/tungsten."""
    for name in env_names("STATE_DIR"):
        if os.environ.get(name):
            return Path(os.environ[name])
    if os.geteuid() == 0:
        return Path("/var/lib/tungsten")
    return Path.home() / ".local" / "state" / "tungsten"


def default_store() -> str:
    return f"sqlite:///{state_dir() / 'config.db'}"


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise click.BadParameter(f"{text!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    host = host.strip("[]")
    try:
        n = int(port)
    except ValueError:
        raise click.BadParameter(f"{text!r}: the port {port!r} is not a number") from None
    if not 0 <= n <= 65535:
        raise click.BadParameter(f"{text!r}: the port must be in [0, 65535]")
    return host, n


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_tokens(path: Path) -> frozenset[str]:
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        fail(f"cannot read the token file {path}: {e.strerror}")
    tokens = frozenset(t.strip() for t in lines if t.strip() and not t.startswith("#"))
    if not tokens:
        fail(f"the token file {path} holds no token (one token per line)")
    return tokens


@click.command()
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True,
              envvar=env_names("LISTEN"), help="HOST:PORT to serve the VNC API on.")
@click.option("--store", "store_url", default=None, envvar=env_names("STORE"),
              help="Config store URL: sqlite:///ABS/PATH or sqlite:///:memory: "
                   "[default: sqlite:///<state dir>/config.db]")
@click.option("--auth", type=click.Choice(["none", "token"]), default="none", show_default=True,
              envvar=env_names("AUTH"),
              help="none: no authentication (loopback only); token: bearer tokens in "
                   "X-Auth-Token.")
@click.option("--token-file", type=click.Path(path_type=Path), envvar=env_names("TOKEN_FILE"),
              help="With --auth token: a file with one valid token per line.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="warning", show_default=True, envvar=env_names("LOG_LEVEL"),
              help="How much to log (structured, to stderr).")
@click.option("--transformer/--no-transformer", default=True, show_default=True,
              help="Run the schema transformer here (one controller on a store holds its "
                   "lease at a time; the others stand by).")
@click.option("--control/--no-control", "control_node", default=True, show_default=True,
              help="Serve the control node (agent streams at /control/v1/stream).")
@click.option("--hold-time", type=click.FloatRange(0.1, 3600), default=5.0, show_default=True,
              envvar=env_names("HOLD_TIME"),
              help="Seconds the routes of an agent that closed its session (a clean stop) "
                   "are kept before they are withdrawn.")
@click.option("--agent-stale-time", type=click.FloatRange(0, 86400), default=0.0,
              show_default=True, envvar=env_names("AGENT_STALE_TIME"),
              help="Seconds the routes of an agent whose session broke without a goodbye "
                   "(crash, kill -9, lost link) are kept, while its datapath may still "
                   "forward; 0 or less than --hold-time: the hold time.")
def controller(listen: str, store_url: str | None, auth: str, token_file: Path | None,
               log_level: str, transformer: bool, control_node: bool,
               hold_time: float, agent_stale_time: float) -> None:
    """Serve TF's VNC config API (the contrail-api server) over a config store.

    Ready when GET / answers.  TF's own client connects unchanged:
    VncApi(api_server_host=HOST, api_server_port=PORT, auth_type='noauth').
    """
    from tungsten.api.core import ConfigApi
    from tungsten.api.server import AuthConfig, build_app
    from tungsten.store import StoreError, open_store

    setup_logging(log_level)
    host, port = parse_listen(listen)
    if auth == "none" and not is_loopback(host):
        fail(f"--auth none serves only loopback addresses, and {host} is not one: "
             "use --auth token --token-file FILE to listen on other addresses")
    tokens: frozenset[str] = frozenset()
    if auth == "token":
        if token_file is None:
            fail("--auth token needs --token-file FILE (one token per line)")
        tokens = read_tokens(token_file)
    url = store_url or default_store()
    try:
        store = open_store(url)
        api = ConfigApi(store)
    except StoreError as e:
        fail(str(e))
    # The index is long-lived and mostly acyclic: keep the collector off it (full collections
    # over a large index were 10 % of create time and most of the p99).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    app = build_app(api, AuthConfig(auth, tokens))
    parts = [f"store {url}", f"auth {auth}", f"{len(api.db.objs)} objects"]
    if control_node:
        from tungsten.control.node import ControlNode

        node = ControlNode(api, hold_time=hold_time, name=f"{socket.gethostname()}:{port}",
                           agent_stale_time=agent_stale_time)
        node.mount(app)
        parts.append(f"control node (hold time {hold_time:g} s, agent stale time "
                     f"{node.agent_stale_time:g} s)")
    services: list[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = []
    if transformer:
        from tungsten.transformer.service import Transformer

        holder = f"{socket.gethostname()}:{os.getpid()}:{port}"
        services.append(Transformer(api, holder).run)
        parts.append("transformer")
    asyncio.run(_serve(app, host, port, ", ".join(parts), services))


async def _serve(app: web.Application, host: str, port: int, detail: str,
                 services: list[Callable[[asyncio.Event], Coroutine[Any, Any, None]]]) -> None:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        fail(f"cannot listen on {host}:{port}: {e.strerror}; is another server running there? "
             "Pick another port with --listen HOST:PORT")
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"Tungsten controller {__version__} serving the VNC API on "
               f"http://{shown}:{port}/ ({detail})", err=True)
    stop = stop_on_signals()
    tasks = [asyncio.create_task(run(stop)) for run in services]
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    logging.getLogger("tungsten").info("shutting down")
    await runner.cleanup()
