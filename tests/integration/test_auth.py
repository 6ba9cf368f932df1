"""Token authentication, the refusal to serve unauthenticated on non-loopback addresses, and
the TF names (X-Contrail-Useragent, CONTRAIL_* environment variables) kept as aliases."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import free_port, terminate

TOKEN = "s3cret-token-for-tests"


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    f = tmp_path / "tokens"
    f.write_text(f"# one token a line\n{TOKEN}\nsecond-valid-token\n")
    return f


@pytest.fixture
def secured(controller_factory: Any, token_file: Path) -> Any:
    return controller_factory(args=["--auth", "token", "--token-file", str(token_file)])


def clean_env() -> dict[str, str]:
    """The environment without our settings, so only what a test sets counts."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("TUNGSTEN_", "CONTRAIL_"))}


def run_controller(args: list[str], timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run a controller that is expected to refuse to start; killed if it starts anyway."""
    cmd = [sys.executable, "-m", "tungsten", "controller", *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=clean_env())
    except subprocess.TimeoutExpired as e:  # subprocess.run kills it before raising
        raise AssertionError(f"the controller started instead of refusing: {cmd}") from e


def test_missing_token_is_401(secured: Any) -> None:
    for path in ("/", "/virtual-networks"):
        r = requests.get(secured.url + path, timeout=10)
        assert r.status_code == 401
        assert r.headers["Content-Type"].startswith("text/plain")
        assert "token" in r.text.lower()
    r = requests.post(secured.url + "/virtual-networks", timeout=10, json={
        "virtual-network": {"fq_name": ["default-domain", "default-project", "nope"]}})
    assert r.status_code == 401


def test_wrong_token_is_401(secured: Any) -> None:
    r = requests.get(secured.url + "/virtual-networks", headers={"X-Auth-Token": "wrong"},
                     timeout=10)
    assert r.status_code == 401
    assert r.headers["Content-Type"].startswith("text/plain")
    assert "not valid" in r.text
    with pytest.raises(ValueError):
        r.json()


def test_right_token_is_200(secured: Any) -> None:
    for token in (TOKEN, "second-valid-token"):
        r = requests.get(secured.url + "/virtual-networks", headers={"X-Auth-Token": token},
                         timeout=10)
        assert r.status_code == 200, r.text
        names = [vn["fq_name"][-1] for vn in r.json()["virtual-networks"]]
        assert "default-virtual-network" in names
    # the comment line of the token file is not a token
    r = requests.get(secured.url + "/", headers={"X-Auth-Token": "# one token a line"},
                     timeout=10)
    assert r.status_code == 401


def test_vnc_api_with_token(secured: Any) -> None:
    from vnc_api import vnc_api as v
    from vnc_api.exceptions import AuthFailed

    api = v.VncApi(api_server_host="127.0.0.1", api_server_port=secured.port,
                   auth_type="noauth", auth_token=TOKEN)
    proj = api.project_read(fq_name=["default-domain", "default-project"])
    uuid = api.virtual_network_create(v.VirtualNetwork("auth-vn", proj))
    assert api.virtual_network_read(id=uuid).get_fq_name()[-1] == "auth-vn"

    with pytest.raises(AuthFailed):
        bad = v.VncApi(api_server_host="127.0.0.1", api_server_port=secured.port,
                       auth_type="noauth", auth_token="not-the-token")
        bad.virtual_networks_list()


def test_auth_none_refuses_non_loopback(tmp_path: Path) -> None:
    port = free_port()
    r = run_controller(["--auth", "none", "--listen", f"0.0.0.0:{port}",
                        "--store", f"sqlite:///{tmp_path / 's.db'}"])
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "--auth none" in r.stderr and "loopback" in r.stderr
    assert "--auth token" in r.stderr  # it says what to do instead


def test_auth_token_needs_token_file(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 's.db'}"
    port = str(free_port())
    r = run_controller(["--auth", "token", "--listen", f"127.0.0.1:{port}", "--store", store])
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "--token-file" in r.stderr
    missing = tmp_path / "no-such-file"
    r = run_controller(["--auth", "token", "--token-file", str(missing), "--listen",
                        f"127.0.0.1:{port}", "--store", store])
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and str(missing) in r.stderr
    empty = tmp_path / "empty"
    empty.write_text("# nothing here\n\n")
    r = run_controller(["--auth", "token", "--token-file", str(empty), "--listen",
                        f"127.0.0.1:{port}", "--store", store])
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "no token" in r.stderr


def test_contrail_useragent_header(controller: Any) -> None:
    """TF clients send X-Contrail-Useragent on every request; it must not upset the server,
    whatever else the request carries."""
    headers = {"X-Contrail-Useragent": "compute-1:/usr/bin/neutron-server"}
    r = requests.post(controller.url + "/useragent-kv", headers=headers, timeout=10,
                      json={"operation": "STORE", "key": "ua-key", "value": "ua-value"})
    assert r.status_code == 200, r.text
    r = requests.post(controller.url + "/useragent-kv", headers=headers, timeout=10,
                      json={"operation": "RETRIEVE", "key": "ua-key"})
    assert r.status_code == 200 and r.json() == {"value": "ua-value"}
    r = requests.get(controller.url + "/virtual-networks", headers=headers, timeout=10)
    assert r.status_code == 200


@pytest.fixture
def env_controller(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """A controller configured only through CONTRAIL_* environment variables."""
    port = free_port()
    env = clean_env()
    env["CONTRAIL_LISTEN"] = f"127.0.0.1:{port}"
    env["CONTRAIL_STORE"] = f"sqlite:///{tmp_path / 'env.db'}"
    log = tmp_path / "env-controller.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tungsten", "controller"], env=env,
                                stdout=out, stderr=out)
    try:
        yield proc, port, tmp_path / "env.db"
    finally:
        terminate(proc)


def test_contrail_listen_env(env_controller: tuple[subprocess.Popen[bytes], int, Path]) -> None:
    proc, port, db = env_controller
    deadline = time.monotonic() + 20
    while True:
        assert proc.poll() is None, f"the controller exited with {proc.returncode}"
        try:
            r = requests.get(f"http://127.0.0.1:{port}/", timeout=1)
            break
        except requests.ConnectionError:
            assert time.monotonic() < deadline, "nothing listens on the CONTRAIL_LISTEN port"
            time.sleep(0.05)
    assert r.status_code == 200
    assert any(link["link"]["name"] == "virtual-network" for link in r.json()["links"])
    assert db.exists()  # CONTRAIL_STORE was honoured too
