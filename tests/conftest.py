"""Shared fixtures: controller processes on free loopback ports, and TF's own client."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def terminate(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """Stop ``proc`` as a service manager would: SIGTERM, SIGKILL after ``grace`` seconds;
    reaped either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Controller:
    """A ``tungsten controller`` process; ``restart()`` keeps the store and the port."""

    store_url: str
    port: int
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        cmd = [sys.executable, "-m", "tungsten", "controller", "--listen",
               f"127.0.0.1:{self.port}", "--store", self.store_url, *self.extra_args]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"controller exited with {self.proc.returncode}: {cmd}")
            try:
                requests.get(self.url + "/", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("controller did not answer GET / in time")

    def stop(self) -> None:
        if self.proc:
            terminate(self.proc)

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def controller_factory(tmp_path: Path) -> Iterator[object]:
    """Call it to start controllers: ``controller_factory(store=None, args=[...])``."""
    started: list[Controller] = []

    def make(store: str | None = None, args: list[str] | None = None) -> Controller:
        url = store or f"sqlite:///{tmp_path / f'store{len(started)}.db'}"
        c = Controller(url, free_port(), list(args or []),
                       log_path=tmp_path / f"controller{len(started)}.log")
        c.start()
        started.append(c)
        return c

    yield make
    for c in started:
        c.stop()


@pytest.fixture
def controller(controller_factory: object) -> Controller:
    """A controller on a fresh SQLite file store."""
    return controller_factory()  # type: ignore[operator, no-any-return]


@pytest.fixture
def vnc(controller: Controller) -> object:
    """TF's unmodified client, connected with auth_type='noauth'."""
    from vnc_api import vnc_api

    return vnc_api.VncApi(api_server_host="127.0.0.1", api_server_port=controller.port,
                          auth_type="noauth")
