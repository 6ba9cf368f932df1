"""``tungsten lab``: bring a fabric up in network namespaces, look at it, run commands in its
workloads, take it down."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from types import FrameType

import click

from tungsten.cli.common import fail


def _say(text: str) -> None:
    click.echo(f"lab: {text}", err=True)


@click.group()
def lab() -> None:
    """A fabric on this machine: underlay, nodes and workloads as network namespaces."""


class _Interrupted(Exception):
    pass


_MAIN_PID = os.getpid()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    if os.getpid() != _MAIN_PID:  # a forked helper (pyroute2's netns worker): die as usual
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise _Interrupted(signal.Signals(signum).name)


@lab.command()
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
def up(file: Path) -> None:
    """Create the lab described by FILE (YAML; see docs/lab.md).  On any error everything
    made so far is removed and the exit status is 2."""
    from tungsten.lab.runner import LabError, Up, down
    from tungsten.lab.topology import TopologyError, parse

    try:
        text = file.read_text()
    except OSError as e:
        fail(f"cannot read {file}: {e.strerror}")
    try:
        topo = parse(text, str(file))
    except TopologyError as e:
        for line in e.errors:
            click.echo(line, err=True)
        fail(f"{file}: {len(e.errors)} problem(s); nothing was created")
    if os.geteuid() != 0:
        fail("a lab needs root (it creates network namespaces)")
    run = Up(topo, _say)
    try:
        run.check_free()
    except LabError as e:
        fail(str(e))
    global _MAIN_PID
    _MAIN_PID = os.getpid()
    old = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        state = run.run()
    except (Exception, _Interrupted) as e:
        reason = f"interrupted ({e})" if isinstance(e, _Interrupted) else str(e) or repr(e)
        if not isinstance(e, LabError | _Interrupted):
            reason = f"{type(e).__name__}: {reason}"
        _say(f"failed: {reason}; removing what was made")
        for s in old:
            signal.signal(s, signal.SIG_IGN)  # finish the clean-up
        try:
            down(run.labdir, _say)
        except LabError as e2:
            _say(f"clean-up incomplete: {e2}")
        fail(f"lab {topo.name} not created: {reason}")
    for s, h in old.items():
        signal.signal(s, h)
    click.echo(f"lab {state.name} is up: controller {state.controller}; "
               f"`tungsten lab status {state.name}`, `tungsten lab exec WORKLOAD -- CMD`, "
               f"`tungsten lab down {state.name}`")


@lab.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(name: str | None, as_json: bool) -> None:
    """Show a lab (NAME may be omitted when one lab is up)."""
    from tungsten.lab.runner import LabError, resolve
    from tungsten.lab.state import LabState

    try:
        labdir = resolve(name)
    except LabError as e:
        fail(str(e))
    state = LabState.load(labdir)
    if state is None:
        fail(f"lab {labdir.name}: no readable state in {labdir} (`tungsten lab down "
             f"{labdir.name}` removes what is left)")
    data = state.status()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"lab {state.name} ({state.phase}), controller {state.controller}")
    for n in state.nodes:
        click.echo(f"  node {n['name']:<12} {n['underlay_ip']:<15} netns {n['netns']}  "
                   f"agent {n['agent_socket']}")
    for w in state.workloads:
        click.echo(f"  workload {w['name']:<12} on {w['node']:<12} {w['network']:<10} "
                   f"{w.get('ip', '-'):<18} {w.get('mac', '-')}")


@lab.command(context_settings={"ignore_unknown_options": True})
@click.option("--lab", "lab_name", default=None, help="The lab [default: the only one up].")
@click.argument("workload")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def exec(lab_name: str | None, workload: str, cmd: tuple[str, ...]) -> None:
    """Run CMD in WORKLOAD's namespace: `tungsten lab exec web1 -- ping 198.51.100.3`.
    The exit status is CMD's."""
    from tungsten.lab.runner import LabError, resolve
    from tungsten.lab.state import LabState

    try:
        labdir = resolve(lab_name)
    except LabError as e:
        fail(str(e))
    state = LabState.load(labdir)
    wl = next((w for w in state.workloads if w["name"] == workload), None) if state else None
    if state is None or wl is None:
        names = ", ".join(w["name"] for w in state.workloads) if state else ""
        fail(f"lab {labdir.name} has no workload {workload!r}" +
             (f" (workloads: {names})" if names else ""))
    sys.stdout.flush()
    try:
        os.execvp("ip", ["ip", "netns", "exec", wl["netns"], *cmd])
    except OSError as e:
        fail(f"cannot run ip netns exec: {e.strerror}")


@lab.command()
@click.argument("name", required=False)
def down(name: str | None) -> None:
    """Remove everything a lab made: processes, namespaces, files (also after a crash or a
    kill -9 of `up`)."""
    from tungsten.lab.runner import LabError, resolve
    from tungsten.lab.runner import down as take_down

    try:
        labdir = resolve(name)
        take_down(labdir, _say)
    except LabError as e:
        fail(str(e))
    click.echo(f"lab {labdir.name} is down")
