"""``tungsten-cni``: the CNI plugin, a thin client of the node's agent.

It validates the environment and the network config, sends one request to the agent's unix
socket, and prints the result or the error object.  The agent does the work (port, address,
plumbing, waiting for the datapath).  Start-up is this program's cost, so it imports only
small stdlib modules (no ``http.client``: one HTTP/1.1 request is written by hand).

DEL never fails because the agent is down: the plugin leaves a note in the spool directory
and the agent releases the attachment when it is back.
"""

from __future__ import annotations

import os
import sys
import time

# the C module: ``socket.py`` adds enums and ``selectors`` the plugin does not need (~2 ms)
from _socket import AF_UNIX, SOCK_STREAM
from _socket import socket as unix_socket

from tungsten.cni import cjson, spec
from tungsten.cni.spec import CniError

TYPE_CHECKING = False  # no typing import at run time: start-up is this program's cost
if TYPE_CHECKING:
    from typing import IO, Any

    from tungsten.cni.spec import Env, NetConf


class Unreachable(Exception):
    """The agent did not answer (no socket, refused, or timed out)."""


def agent_call(sock_path: str, method: str, path: str, body: Any, timeout: float) \
        -> tuple[int, Any]:
    """One HTTP/1.1 request over the agent's unix socket: (status, decoded JSON body)."""
    payload = b"" if body is None else cjson.dumps(body).encode()
    head = (f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n")
    s = unix_socket(AF_UNIX, SOCK_STREAM)
    try:
        s.settimeout(timeout)
        try:
            s.connect(sock_path)
        except OSError as e:
            raise Unreachable(f"no agent answers on {sock_path}: {e.strerror or e}") from None
        try:
            s.sendall(head.encode() + payload)
            chunks = []
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError as e:
            raise Unreachable(f"the agent on {sock_path} did not answer: {e.strerror or e}") \
                from None
    finally:
        s.close()
    raw = b"".join(chunks)
    top, _, data = raw.partition(b"\r\n\r\n")
    try:
        status = int(top.split(b" ", 2)[1])
        return status, cjson.loads(data) if data else None
    except (IndexError, ValueError):
        raise Unreachable(f"the agent on {sock_path} sent a reply that is not HTTP/JSON") \
            from None


def _agent_error(status: int, reply: Any) -> CniError:
    if isinstance(reply, dict) and isinstance(reply.get("code"), int):
        return CniError(reply["code"], str(reply.get("msg", "")), str(reply.get("details", "")))
    msg = reply.get("error") if isinstance(reply, dict) else reply
    return CniError(spec.E_AGENT, f"the agent failed ({status}): {msg}", str(status))


def _request(env: Env, conf: NetConf) -> dict[str, Any]:
    return {"containerID": env.container_id, "ifname": env.ifname, "netns": env.netns,
            "name": conf.name, "network": conf.network, "spoolDir": conf.spool_dir}


def _call(conf: NetConf, path: str, body: Any, method: str = "POST") -> Any:
    status, reply = agent_call(conf.agent_socket, method, path, body, conf.timeout + 30)
    if status >= 300:
        raise _agent_error(status, reply)
    return reply


def cmd_add(env: Env, conf: NetConf) -> dict[str, Any]:
    body = {**_request(env, conf), "mtu": conf.mtu, "device": conf.device,
            "ips": list(conf.ips), "mac": conf.mac, "labels": conf.labels,
            "timeout": conf.timeout}
    try:
        result = _call(conf, "/cni/add", body)
    except Unreachable as e:
        raise CniError(spec.E_TRY_AGAIN, "the tungsten agent is not reachable: try again",
                       str(e)) from None
    return spec.format_result(spec.merge_prev(conf.prev_result, result), conf.cni_version)


def spool_delete(env: Env, conf: NetConf) -> str:
    """Leave a note for the agent: release (containerID, ifname) when you are back."""
    os.makedirs(conf.spool_dir, mode=0o700, exist_ok=True)
    path = os.path.join(conf.spool_dir, f"{env.container_id}_{env.ifname}.json")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(cjson.dumps({**_request(env, conf), "time": time.time()}))
    os.replace(tmp, path)
    return path


def cmd_del(env: Env, conf: NetConf) -> None:
    """Best effort: when the agent does not answer or fails, leave it a note and succeed
    (a DEL that fails leaves pods stuck terminating); it releases the attachment later."""
    try:
        _call(conf, "/cni/del", _request(env, conf))
        return
    except (Unreachable, CniError) as e:
        why = e.msg if isinstance(e, CniError) else str(e)
    try:
        note = spool_delete(env, conf)
    except OSError as oe:  # still succeed: the agent's GC and netns sweep catch it
        print(f"tungsten-cni: {why}; cannot spool the delete: {oe}", file=sys.stderr)
    else:
        print(f"tungsten-cni: {why}; the agent releases it later ({note})", file=sys.stderr)


def cmd_check(env: Env, conf: NetConf) -> None:
    try:
        _call(conf, "/cni/check", {**_request(env, conf), "prevResult": conf.prev_result,
                                   "mtu": conf.mtu})
    except Unreachable as e:
        raise CniError(spec.E_TRY_AGAIN, "the tungsten agent is not reachable: try again",
                       str(e)) from None


def cmd_gc(env: Env, conf: NetConf) -> None:
    valid = [{"containerID": c, "ifname": i} for c, i in conf.valid_attachments]
    try:
        _call(conf, "/cni/gc", {"name": conf.name, "validAttachments": valid})
    except Unreachable as e:
        raise CniError(spec.E_TRY_AGAIN, "the tungsten agent is not reachable: try again",
                       str(e)) from None


def cmd_status(env: Env, conf: NetConf) -> None:
    try:
        st = _call(conf, "/status", None, method="GET")
    except Unreachable as e:
        raise CniError(spec.E_NOT_AVAILABLE, "the tungsten agent is not reachable",
                       str(e)) from None
    if isinstance(st, dict) and st.get("headless"):
        raise CniError(spec.E_LIMITED, "the tungsten agent has no control session (headless): "
                       "new ports cannot get their config", str(st.get("node", "")))


HANDLERS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "GC": cmd_gc,
            "STATUS": cmd_status}


def _version_of(raw: bytes) -> str:
    """The cniVersion to answer errors with, before the config is known to be valid."""
    try:
        return spec.stdin_version(cjson.loads(raw or b"null"))
    except ValueError:
        return spec.SUPPORTED_VERSIONS[-1]


def run(environ: dict[str, str] | os._Environ[str], raw: bytes, out: IO[str]) -> int:
    """One plugin invocation; returns the exit status."""
    version = spec.SUPPORTED_VERSIONS[-1]
    try:
        version = _version_of(raw)
        env = spec.parse_env(environ)  # before anything else: no side effect on bad input
        data = spec.decode(raw)
        if env.command == "VERSION":
            asked = data.get("cniVersion") if isinstance(data, dict) else None
            out.write(cjson.dumps({"cniVersion": asked or version,
                                  "supportedVersions": list(spec.SUPPORTED_VERSIONS)}) + "\n")
            return 0
        conf = spec.parse_config(data, env)
        version = conf.cni_version
        result = HANDLERS[env.command](env, conf)
        if result is not None:
            out.write(cjson.dumps(result) + "\n")
        return 0
    except CniError as e:
        out.write(cjson.dumps(e.body(version)) + "\n")
        return 1


def main() -> None:
    if len(sys.argv) > 1:  # a person installing the plugin (runtimes pass no arguments)
        from tungsten.cni.install import cli

        sys.exit(cli(sys.argv[1:]))
    try:
        raw = sys.stdin.buffer.read()
    except OSError:
        raw = b""
    sys.exit(run(os.environ, raw, sys.stdout))


if __name__ == "__main__":
    main()
