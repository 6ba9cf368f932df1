"""The ``tungsten`` command tree."""

from __future__ import annotations

import click

from tungsten import __version__
from tungsten.cli.agent import agent, trace
from tungsten.cli.controller import controller
from tungsten.cli.demo import demo
from tungsten.cli.flows import flows
from tungsten.cli.lab import lab
from tungsten.cli.sim import sim
from tungsten.cli.store import store
from tungsten.cli.transformer import transformer


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tungsten")
def cli() -> None:
    """Tungsten: the Tungsten Fabric SDN on a stock Linux kernel."""


cli.add_command(agent)
cli.add_command(trace)
cli.add_command(controller)
cli.add_command(demo)
cli.add_command(flows)
cli.add_command(lab)
cli.add_command(sim)
cli.add_command(store)
cli.add_command(transformer)


def main() -> None:
    cli()


def contrail_api() -> None:
    """``contrail-api``: the name TF operators know for the config API server."""
    controller(prog_name="contrail-api")
