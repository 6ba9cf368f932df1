"""A private podman for tests: its own config, storage, CNI plugin and network directories,
and a busybox-static root filesystem instead of an image.

Nothing global is read or written: ``CONTAINERS_CONF`` names our containers.conf (podman then
ignores /usr/share/containers and /etc/containers), ``CONTAINERS_STORAGE_CONF`` our storage.conf,
and ``--root``/``--runroot``/``--tmpdir`` point into the kit's temporary directory (with
``lock_type = "file"`` the container locks live there too instead of the shared
``/dev/shm/libpod_lock``).  podman itself runs inside a namespace the kit creates (``nsenter
--net``), so whatever a plugin puts in the runtime's namespace (the reference ``bridge``
plugin's bridge) stays there.  What podman 4.3 still shares with the machine, by design and
keyed by container id: the container namespaces ``/run/netns/netns-<uuid>``, runc's state in
``/run/runc/<id>``, libcni's result cache ``/var/lib/cni/results/<net>-<id>-<if>`` and the
cgroupfs groups ``libpod_parent/libpod-<id>``; ``podman rm`` removes them all, and ``close()``
checks the namespaces.

Flags found by experiment on Debian 12 (podman 4.3.1, runc 1.1.5) with root that lacks
CAP_SYS_RESOURCE: the default ``RLIMIT_NPROC`` and ``RLIMIT_NOFILE`` podman asks for are above
the hard limits, so runc fails with "error setting rlimits ... operation not permitted" unless
``--ulimit nofile=10000:10000 --ulimit nproc=4096:4096`` are given; no systemd, hence
``--cgroup-manager=cgroupfs`` and ``events_logger = "file"``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REFERENCE_PLUGINS = Path("/usr/lib/cni")
BUSYBOX = Path("/usr/bin/busybox")
GLOBAL_FLAGS = ("--runtime", "runc", "--cgroup-manager=cgroupfs", "--events-backend=file",
                "--storage-driver=vfs")
RUN_FLAGS = ("--ulimit", "nofile=10000:10000", "--ulimit", "nproc=4096:4096")
TIMEOUT = 120.0


def available() -> str | None:
    """Why the kit cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (podman with CNI networks)"
    for tool in ("podman", "runc", "conmon", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/install-deps installs it)"
    if not BUSYBOX.is_file():
        return f"{BUSYBOX} is missing (package busybox-static)"
    if not (REFERENCE_PLUGINS / "bridge").is_file():
        return f"{REFERENCE_PLUGINS}/bridge is missing (package containernetworking-plugins)"
    return None


def containers_conf(plugin_dir: Path, network_dir: Path, tmp_dir: Path) -> str:
    """The containers.conf the kit uses; docs/cni.md shows the same settings as a drop-in."""
    return (
        "[network]\n"
        'network_backend = "cni"\n'
        f'cni_plugin_dirs = ["{plugin_dir}"]\n'
        f'network_config_dir = "{network_dir}"\n'
        "\n[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        f'events_logfile_path = "{tmp_dir}/events.log"\n'
        f'tmp_dir = "{tmp_dir}"\n'
        'lock_type = "file"\n')


def build_rootfs(root: Path, applets: tuple[str, ...] = ()) -> Path:
    """A root filesystem of busybox-static: /bin/busybox and a symlink per applet (all of
    ``busybox --list`` unless ``applets`` names some)."""
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "run"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    names = applets or tuple(subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split())
    for name in names:
        if name != "busybox":
            (root / "bin" / name).symlink_to("busybox")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    return root


def reference_conflist(name: str, bridge: str, subnet: str, data_dir: Path) -> dict[str, Any]:
    """Debian's reference plugins: a ``bridge`` with ``host-local`` addresses."""
    return {"cniVersion": "1.0.0", "name": name, "plugins": [{
        "type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False,
        "ipam": {"type": "host-local", "dataDir": str(data_dir),
                 "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}]}}]}


def tungsten_conflist(name: str, network: str, agent_socket: str,
                      mtu: int | None = None) -> dict[str, Any]:
    plugin: dict[str, Any] = {"type": "tungsten-cni", "network": network,
                              "agentSocket": agent_socket}
    if mtu is not None:
        plugin["mtu"] = mtu
    return {"cniVersion": "1.0.0", "name": name, "plugins": [plugin]}


@dataclass
class Container:
    name: str
    network: str
    ip: str
    netns: str  # the path podman bind-mounted the container's namespace on


@dataclass
class Podman:
    base: Path
    netns: str | None  # the namespace podman runs in (None: the caller's)
    netns_created: bool = False
    closed: bool = False
    containers: list[str] = field(default_factory=list)
    sandboxes: list[str] = field(default_factory=list)

    @property
    def plugin_dir(self) -> Path:
        return self.base / "cni-plugins"

    @property
    def network_dir(self) -> Path:
        return self.base / "cni-networks"

    @property
    def rootfs(self) -> Path:
        return self.base / "rootfs"

    @property
    def ipam_dir(self) -> Path:
        """Where a ``host-local`` conflist of the kit keeps its leases."""
        return self.base / "ipam"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.base / "containers.conf"),
                "CONTAINERS_STORAGE_CONF": str(self.base / "storage.conf")}

    def cmd(self, *args: str) -> list[str]:
        enter = ["nsenter", f"--net=/run/netns/{self.netns}"] if self.netns else []
        return [*enter, "podman", "--root", str(self.base / "root"),
                "--runroot", str(self.base / "runroot"), "--tmpdir", str(self.base / "tmp"),
                *GLOBAL_FLAGS, *args]

    def run(self, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.cmd(*args), env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def add_plugin(self, name: str, path: Path) -> None:
        link = self.plugin_dir / name
        link.unlink(missing_ok=True)
        link.symlink_to(path)

    def add_network(self, conflist: dict[str, Any]) -> Path:
        path = self.network_dir / f"{conflist['name']}.conflist"
        path.write_text(json.dumps(conflist, indent=2) + "\n")
        return path

    def start(self, name: str, network: str, *command: str) -> Container:
        """``podman run -d`` a container of the rootfs on ``network`` (default command: a long
        sleep) and return its address; raises with podman's message on failure."""
        self.containers.append(name)
        r = self.run("run", "-d", "--name", name, "--network", network, *RUN_FLAGS,
                     "--rootfs", str(self.rootfs), *(command or ("sleep", "3600")))
        if r.returncode != 0:
            raise RuntimeError(f"podman run {name} failed ({r.returncode}): {r.stderr.strip()}")
        info = self.inspect(name)
        sandbox = str(info["NetworkSettings"]["SandboxKey"])
        self.sandboxes.append(sandbox)
        ip = str(info["NetworkSettings"]["Networks"][network]["IPAddress"])
        return Container(name, network, ip, sandbox)

    def inspect(self, name: str) -> dict[str, Any]:
        r = self.run("inspect", name)
        if r.returncode != 0:
            raise RuntimeError(f"podman inspect {name} failed: {r.stderr.strip()}")
        data: list[dict[str, Any]] = json.loads(r.stdout)
        return data[0]

    def exec(self, name: str, *command: str,
             timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
        return self.run("exec", name, *command, timeout=timeout)

    def ping(self, name: str, ip: str) -> bool:
        return self.exec(name, "ping", "-c", "3", "-i", "0.2", "-W", "1", ip).returncode == 0

    def tcp(self, server: str, server_ip: str, client: str, port: int = 5000) -> bool:
        """Serve a random line with ``nc -l`` in ``server``: does ``nc`` in ``client`` read
        it?"""
        token = secrets.token_hex(4)
        r = self.run("exec", "-d", server, "sh", "-c", f"echo {token} | nc -l -p {port}")
        assert r.returncode == 0, r.stderr
        for _ in range(10):  # the listener needs a moment: retry a refused connect
            got = self.exec(client, "sh", "-c", f"nc -w 2 {server_ip} {port} </dev/null",
                            timeout=30).stdout.strip()
            if got:
                return got == token
        return False

    def rm(self, name: str) -> subprocess.CompletedProcess[str]:
        return self.run("rm", "-f", "-t", "0", name)

    def _processes(self) -> list[psutil.Process]:
        """Processes whose command line names this podman's directory."""
        out = []
        for p in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if any(str(self.base) + "/" in a for a in p.info.get("cmdline") or []):
                    out.append(p)
        return out

    def close(self) -> list[str]:
        """Remove every container of this podman and what could be left of them; return what
        had to be removed by force (should be nothing)."""
        forced: list[str] = []
        if self.closed:
            return forced
        self.closed = True
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.run("rm", "-a", "-f", "-t", "0")
        # conmon and friends name our runroot; `podman rm` returns before conmon has exited
        # (it cleans up after the container asynchronously): give them a bounded while
        deadline = time.monotonic() + 10
        while (left := self._processes()) and time.monotonic() < deadline:
            time.sleep(0.1)
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.kill()
                forced.append(f"process {p.pid}")
        for sandbox in self.sandboxes:
            if sandbox.startswith("/run/netns/") and os.path.exists(sandbox):
                subprocess.run(["ip", "netns", "del", os.path.basename(sandbox)], check=False)
                forced.append(sandbox)
        for line in reversed(Path("/proc/self/mounts").read_text().splitlines()):
            target = line.split()[1]
            if target.startswith(str(self.base) + "/"):
                subprocess.run(["umount", "-l", target], check=False)
                forced.append(target)
        if self.netns and self.netns_created:
            subprocess.run(["ip", "netns", "del", self.netns], check=False)
        shutil.rmtree(self.base, ignore_errors=True)
        return forced


@contextlib.contextmanager
def private_podman(tag: str, plugins: Mapping[str, Path] | None = None,
                   own_netns: bool = True) -> Iterator[Podman]:
    """A private podman named from ``tag`` (unique per test).  ``plugins`` maps CNI plugin
    names to binaries (default: the reference bridge, host-local and loopback); with
    ``own_netns`` podman runs in a namespace ``<tag>-rt`` of its own.  Everything goes on
    exit, failures included."""
    base = Path(tempfile.mkdtemp(prefix=f"podmankit-{tag}-"))
    pm = Podman(base, f"{tag}-rt" if own_netns else None)
    try:
        for d in ("cni-plugins", "cni-networks", "root", "runroot", "tmp", "ipam"):
            (base / d).mkdir()
        (base / "containers.conf").write_text(
            containers_conf(pm.plugin_dir, pm.network_dir, base / "tmp"))
        (base / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\ngraphroot = "{base}/root"\n'
            f'runroot = "{base}/runroot"\n')
        build_rootfs(pm.rootfs)
        for name, path in (plugins or {n: REFERENCE_PLUGINS / n for n in (
                "bridge", "host-local", "loopback")}).items():
            pm.add_plugin(name, path)
        if pm.netns:
            subprocess.run(["ip", "netns", "add", pm.netns], check=True, capture_output=True)
            pm.netns_created = True
            subprocess.run(["ip", "-n", pm.netns, "link", "set", "lo", "up"], check=True)
        yield pm
    finally:
        pm.close()
