"""Two ``tungsten transformer`` processes on one store: one is active, and when it is killed
(-9: no chance to give the lease up) the other takes over and keeps deriving."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import terminate
from tests.waits import wait_for
from tungsten.api.context import RequestCtx
from tungsten.api.core import ConfigApi
from tungsten.store import open_store
from tungsten.transformer.lease import read_lease

PROJECT = ["default-domain", "default-project"]
LEASE_S = "2"


@pytest.fixture
def procs() -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    started: dict[str, subprocess.Popen[bytes]] = {}
    yield started
    for p in started.values():
        terminate(p)


def _targets(api: ConfigApi, vn: str) -> list[str]:
    api.db.catch_up()
    ri = api.db.lookup("routing-instance", [*PROJECT, vn, vn])
    if ri is None:
        return []
    return [api.db.objs[r["uuid"]].fq_name[0]
            for r in api.db.objs[ri].refs.get("route_target_refs", [])
            if r["uuid"] in api.db.objs]


def test_standby_takes_over_after_kill(tmp_path: Path,
                                       procs: dict[str, subprocess.Popen[bytes]]) -> None:
    url = f"sqlite:///{tmp_path / 'config.db'}"
    api = ConfigApi(open_store(url))  # boots the store; our window on it
    ctx = RequestCtx()

    def add_network(name: str) -> None:
        api.create("virtual-network", {"virtual-network": {
            "fq_name": [*PROJECT, name], "parent_type": "project"}}, ctx)

    add_network("before")
    for name in ("a", "b"):
        log = open(tmp_path / f"transformer-{name}.log", "wb")  # noqa: SIM115
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "tungsten", "transformer", "--store", url,
             "--holder", name, "--lease", LEASE_S, "--log-level", "info"],
            stdout=log, stderr=log)
        log.close()
    store = api.db.store

    def holder() -> str | None:
        current = read_lease(store)
        return current.holder if current is not None and current.expires > time.time() else None

    wait_for("a lease holder", lambda: holder() in ("a", "b"))
    wait_for("the active one derives", lambda: bool(_targets(api, "before")))
    active = holder()
    assert active is not None
    standby = "b" if active == "a" else "a"
    # both run; the lease names the one that writes
    assert all(p.poll() is None for p in procs.values())

    os.kill(procs[active].pid, signal.SIGKILL)
    procs[active].wait()
    wait_for("the standby takes the lease", lambda: holder() == standby)
    add_network("after")
    wait_for("the new network's route target", lambda: bool(_targets(api, "after")))
    assert _targets(api, "after")[0].startswith("target:64512:")
    assert _targets(api, "after") != _targets(api, "before")
