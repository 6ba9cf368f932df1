"""The CNI contract as pure functions: environment and network-config validation, error
codes, and result formatting per ``cniVersion``.  Stdlib only (``os``, ``_socket``, and
``_json`` through ``cjson``): the plugin imports this on every call.
"""

from __future__ import annotations

import os

# the C module, not ``socket.py`` (its enums and ``selectors`` cost ~2 ms per plugin run)
from _socket import AF_INET, AF_INET6, inet_pton

from tungsten.cni import cjson

TYPE_CHECKING = False  # typing and dataclasses cost milliseconds at every plugin start
if TYPE_CHECKING:
    from typing import Any

SUPPORTED_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS")
PLUGIN_TYPE = "tungsten-cni"
DEFAULT_SOCKET = "/var/lib/tungsten/agent/agent.sock"
DEFAULT_DOMAIN = "default-domain"
DEFAULT_TIMEOUT = 60.0

# Error codes: the spec's reserved ones, then ours (100+).
E_VERSION = 1  # incompatible CNI version
E_FIELD = 2  # unsupported field in the network config
E_CONTAINER = 3  # container unknown or gone: the runtime needs no cleanup
E_ENV = 4  # invalid or missing environment variables
E_IO = 5
E_DECODE = 6  # the network config is not JSON
E_CONFIG = 7  # invalid network config
E_TRY_AGAIN = 11  # transient: the agent does not answer
E_NOT_AVAILABLE = 50  # STATUS: the plugin cannot serve ADD now
E_LIMITED = 51  # STATUS: ... and existing containers may have limited connectivity
E_AGENT = 100  # the agent failed without a CNI code of its own
E_IF_EXISTS = 101  # the container already has an interface by that name
E_API = 102  # the config API refused the port (e.g. the requested address is in use)
E_NOT_READY = 103  # the datapath did not install the port in time

VALID_ATTACHMENT_KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_HEX = frozenset("0123456789abcdefABCDEF")


# Plain string checks rather than regular expressions: compiling those costs milliseconds
# at every start.
def is_id(text: str) -> bool:
    """A container ID or network name: a letter or digit, then letters, digits, _ . -"""
    return bool(text) and text[0].isascii() and text[0].isalnum() \
        and all(c in _ID_CHARS for c in text)


def is_mac(text: str) -> bool:
    parts = text.split(":")
    return len(parts) == 6 and all(len(p) == 2 and set(p) <= _HEX for p in parts)


def is_pci(text: str) -> bool:
    """A PCI address, 0000:03:00.2."""
    dom, _, rest = text.partition(":")
    bus, _, rest = rest.partition(":")
    dev, _, fn = rest.partition(".")
    return len(dom) == 4 and len(bus) == 2 and len(dev) == 2 and fn in "01234567" \
        and len(fn) == 1 and set(dom + bus + dev) <= _HEX


class CniError(Exception):
    """A failure the plugin prints as the spec's error object."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details

    def body(self, cni_version: str) -> dict[str, Any]:
        return {"cniVersion": cni_version, "code": self.code, "msg": self.msg,
                "details": self.details}


def version_key(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in v.split("."))
    except ValueError:
        return (0,)


# -- environment --------------------------------------------------------------------------
class Env:
    """The validated environment of one call."""

    __slots__ = ("args", "command", "container_id", "ifname", "netns", "path")

    def __init__(self, command: str, container_id: str = "", netns: str = "",
                 ifname: str = "", args: dict[str, str] | None = None, path: str = "") -> None:
        self.command, self.container_id, self.netns = command, container_id, netns
        self.ifname, self.args, self.path = ifname, args or {}, path


def ifname_problem(name: str) -> str | None:
    """Why ``name`` cannot be a Linux interface name (None: it can)."""
    if not name:
        return "is empty"
    if len(name) > 15:
        return "is longer than 15 characters"
    if name in (".", ".."):
        return "is . or .."
    if any(c in name for c in "/:") or any(c.isspace() for c in name):
        return "contains '/', ':' or whitespace"
    return None


def parse_env(environ: dict[str, str] | os._Environ[str]) -> Env:
    """Validate the variables ``CNI_COMMAND`` needs; one error naming every bad one."""
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        what = "is missing" if not command else f"is {command!r}, not one of " + \
            ", ".join(COMMANDS)
        raise CniError(E_ENV, f"CNI_COMMAND {what}", "CNI_COMMAND")
    needed = {"ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
              "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
              "DEL": ("CNI_CONTAINERID", "CNI_IFNAME")}.get(command, ())
    missing = [n for n in needed if not environ.get(n)]
    bad: list[str] = []
    cid = environ.get("CNI_CONTAINERID", "")
    if cid and needed and not is_id(cid):
        bad.append("CNI_CONTAINERID (must start with a letter or digit, then letters, "
                   "digits, '_', '.' or '-')")
    ifname = environ.get("CNI_IFNAME", "")
    if ifname and needed:
        problem = ifname_problem(ifname)
        if problem:
            bad.append(f"CNI_IFNAME ({ifname!r} {problem})")
    netns = environ.get("CNI_NETNS", "")
    if netns and needed and not netns.startswith("/"):
        bad.append(f"CNI_NETNS ({netns!r} is not an absolute path)")
    args: dict[str, str] = {}
    for item in filter(None, environ.get("CNI_ARGS", "").split(";")):
        k, sep, v = item.partition("=")
        if not sep or not k:
            bad.append(f"CNI_ARGS ({item!r} is not KEY=VALUE)")
            break
        args[k] = v
    if missing or bad:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + \
            ([f"invalid {', '.join(bad)}"] if bad else [])
        names = [*missing, *(b.split(" ", 1)[0] for b in bad)]
        raise CniError(E_ENV, f"{command}: " + "; ".join(parts), ", ".join(names))
    return Env(command, cid, netns, ifname, args, environ.get("CNI_PATH", ""))


# -- network config -----------------------------------------------------------------------
class NetConf:
    """The validated network config of one call."""

    __slots__ = ("agent_socket", "cni_version", "device", "ips", "labels", "mac", "mtu",
                 "name", "network", "prev_result", "raw", "spool_dir", "timeout",
                 "valid_attachments")

    def __init__(self, cni_version: str, name: str, network: str, agent_socket: str,
                 spool_dir: str, mtu: int | None, device: str, timeout: float,
                 ips: tuple[str, ...], mac: str, labels: dict[str, str],
                 prev_result: dict[str, Any] | None,
                 valid_attachments: tuple[tuple[str, str], ...], raw: dict[str, Any]) -> None:
        self.cni_version, self.name, self.network = cni_version, name, network
        self.agent_socket, self.spool_dir, self.mtu = agent_socket, spool_dir, mtu
        self.device, self.timeout, self.ips, self.mac = device, timeout, ips, mac
        self.labels, self.prev_result = labels, prev_result
        self.valid_attachments, self.raw = valid_attachments, raw


def decode(raw: bytes) -> Any:
    try:
        return cjson.loads(raw or b"")
    except ValueError as e:
        raise CniError(E_DECODE, "the network config on stdin is not JSON", str(e)) from None


def _bad(key: str, why: str) -> CniError:
    return CniError(E_CONFIG, f"invalid network config: {key} {why}", key)


def stdin_version(data: Any) -> str:
    """The config's cniVersion when it is one we speak (for error objects), else the latest."""
    v = data.get("cniVersion") if isinstance(data, dict) else None
    return v if isinstance(v, str) and v in SUPPORTED_VERSIONS else SUPPORTED_VERSIONS[-1]


def check_version(data: Any, command: str) -> str:
    if not isinstance(data, dict):
        raise _bad("(the config)", "must be a JSON object")
    v = data.get("cniVersion")
    if not isinstance(v, str) or not v:
        raise _bad("cniVersion", "is missing")
    if v not in SUPPORTED_VERSIONS:
        raise CniError(E_VERSION, f"cniVersion {v} is not supported (this plugin speaks "
                       f"{', '.join(SUPPORTED_VERSIONS)})", v)
    if command in ("GC", "STATUS") and version_key(v) < (1, 1, 0):
        raise CniError(E_VERSION, f"{command} needs cniVersion 1.1.0 or later, the config "
                       f"says {v}", v)
    return v


def normalize_network(value: Any) -> str:
    """``domain:project:network``, or ``project:network`` in the default domain."""
    if not isinstance(value, str):
        raise _bad("network", 'must be a string "domain:project:network"')
    parts = value.split(":")
    if len(parts) == 2:
        parts = [DEFAULT_DOMAIN, *parts]
    if len(parts) != 3 or not all(parts):
        raise _bad("network", f'{value!r} is not "domain:project:network" or '
                   '"project:network"')
    return ":".join(parts)


def _ip_problem(text: str) -> str | None:
    addr, _, plen = text.partition("/")
    for fam in (AF_INET, AF_INET6):
        try:
            inet_pton(fam, addr)
        except OSError:
            continue
        if plen and not (plen.isdigit() and int(plen) <= (32 if fam == AF_INET
                                                          else 128)):
            return f"{text!r} has a bad prefix length"
        return None
    return f"{text!r} is not an IP address"


def device_from_pci(pci: str, sysfs: str = "/sys/bus/pci/devices") -> str:
    """The netdev name of a PCI device (a VF), as the runtime's ``deviceID`` gives it."""
    try:
        names = sorted(os.listdir(f"{sysfs}/{pci}/net"))
    except OSError:
        names = []
    if not names:
        raise _bad("runtimeConfig.deviceID", f"{pci} has no network device on this host")
    return names[0]


def _labels(data: dict[str, Any], env: Env) -> dict[str, str]:
    out: dict[str, str] = {}
    if not isinstance(data.get("args", {}), dict):
        raise _bad("args", "must be an object")
    for k in ("K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_UID"):
        if env.args.get(k):
            out[k] = env.args[k]
    cni = (data.get("args") or {}).get("cni") if isinstance(data.get("args"), dict) else None
    if cni is not None and not isinstance(cni, dict):
        raise _bad("args.cni", "must be an object")
    for i, item in enumerate((cni or {}).get("labels") or []):
        if not (isinstance(item, dict) and isinstance(item.get("key"), str)
                and isinstance(item.get("value"), str)):
            raise _bad(f"args.cni.labels[{i}]", 'must be {"key": STR, "value": STR}')
        out[item["key"]] = item["value"]
    return out


def parse_config(data: Any, env: Env) -> NetConf:
    """Validate the request config (after ``check_version``); errors name the key."""
    version = check_version(data, env.command)
    assert isinstance(data, dict)
    name = data.get("name")
    if not isinstance(name, str) or not is_id(name):
        raise _bad("name", "must be a network name (a letter or digit, then letters, digits, "
                   "'_', '.' or '-')")
    if not isinstance(data.get("type"), str) or not data["type"]:
        raise _bad("type", "must be the plugin name")
    network = ""
    if "network" in data or env.command in ("ADD", "CHECK"):
        network = normalize_network(data.get("network"))
    sock = data.get("agentSocket", DEFAULT_SOCKET)
    if not isinstance(sock, str) or not sock.startswith("/"):
        raise _bad("agentSocket", "must be an absolute path")
    spool = data.get("spoolDir", sock + ".pending")
    if not isinstance(spool, str) or not spool.startswith("/"):
        raise _bad("spoolDir", "must be an absolute path")
    mtu = data.get("mtu")
    if mtu is not None and (not isinstance(mtu, int) or isinstance(mtu, bool)
                            or not 576 <= mtu <= 65535):
        raise _bad("mtu", "must be an integer from 576 to 65535")
    timeout = data.get("timeout", DEFAULT_TIMEOUT)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) \
            or not 0 < timeout <= 3600:
        raise _bad("timeout", "must be a number of seconds (0 < timeout <= 3600)")
    rc = data.get("runtimeConfig") or {}
    if not isinstance(rc, dict):
        raise _bad("runtimeConfig", "must be an object")
    ips_in = rc.get("ips")
    args_cni = (data.get("args") or {}).get("cni") if isinstance(data.get("args"), dict) \
        else None
    if ips_in is None and isinstance(args_cni, dict):
        ips_in = args_cni.get("ips")
    if ips_in is not None and not isinstance(ips_in, list):
        raise _bad("runtimeConfig.ips", "must be a list of addresses")
    ips: list[str] = []
    for i, ip in enumerate(ips_in or []):
        problem = _ip_problem(ip) if isinstance(ip, str) else "must be a string"
        if problem:
            raise _bad(f"runtimeConfig.ips[{i}]", problem)
        ips.append(ip.partition("/")[0])
    mac = rc.get("mac", "")
    if not isinstance(mac, str) or (mac and not is_mac(mac)):
        raise _bad("runtimeConfig.mac", f"{mac!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
    device = data.get("device", "")
    key = "device"
    if not device and rc.get("deviceID"):
        device, key = rc["deviceID"], "runtimeConfig.deviceID"
        if isinstance(device, str) and is_pci(device):
            device = device_from_pci(device)
    if not isinstance(device, str):
        raise _bad(key, "must be an interface name")
    if device:
        problem = ifname_problem(device)
        if problem:
            raise _bad(key, f"{device!r} {problem}")
    prev = data.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise _bad("prevResult", "must be an object")
    if env.command == "CHECK" and not prev:
        raise _bad("prevResult", "is needed by CHECK")
    valid: list[tuple[str, str]] = []
    if env.command == "GC":
        keys = [k for k in VALID_ATTACHMENT_KEYS if k in data]
        if not keys:
            raise _bad(VALID_ATTACHMENT_KEYS[0], "is missing (GC needs the valid attachments)")
        for k in keys:
            items = data[k]
            if not isinstance(items, list):
                raise _bad(k, "must be a list")
            for i, a in enumerate(items):
                if not (isinstance(a, dict) and isinstance(a.get("containerID"), str)
                        and isinstance(a.get("ifname"), str)):
                    raise _bad(f"{k}[{i}]", 'must be {"containerID": STR, "ifname": STR}')
                valid.append((a["containerID"], a["ifname"]))
    return NetConf(version, name, network, sock, spool, mtu, device, float(timeout),
                   tuple(ips), mac.lower(), _labels(data, env), prev, tuple(valid), data)


# -- results ------------------------------------------------------------------------------
_V11_IF_KEYS = ("mtu", "socketPath", "pciID")
_V11_ROUTE_KEYS = ("mtu", "advmss", "priority", "table", "scope")


def format_result(result: dict[str, Any], version: str) -> dict[str, Any]:
    """The agent's (1.1.0-shaped) result as ``version`` spells it."""
    v = version_key(version)
    out: dict[str, Any] = {"cniVersion": version}
    ifs = [dict(i) for i in result.get("interfaces", ())]
    ips = [dict(i) for i in result.get("ips", ())]
    routes = [dict(r) for r in result.get("routes", ())]
    if v < (1, 1, 0):
        for i in ifs:
            for k in _V11_IF_KEYS:
                i.pop(k, None)
        for r in routes:
            for k in _V11_ROUTE_KEYS:
                r.pop(k, None)
    if v < (1, 0, 0):
        for ip in ips:
            ip["version"] = "6" if ":" in ip.get("address", "") else "4"
    out["interfaces"], out["ips"] = ifs, ips
    if routes:
        out["routes"] = routes
    dns = result.get("dns")
    out["dns"] = dict(dns) if dns else {}
    return out


def merge_prev(prev: dict[str, Any] | None, ours: dict[str, Any]) -> dict[str, Any]:
    """Our result appended to a previous plugin's (indices of our ``ips`` shifted)."""
    if not prev:
        return ours
    shift = len(prev.get("interfaces") or [])
    ips = [dict(ip, interface=ip["interface"] + shift) if "interface" in ip else dict(ip)
           for ip in ours.get("ips", ())]
    dns = dict(prev.get("dns") or {}) or ours.get("dns") or {}
    return {"interfaces": [*(prev.get("interfaces") or []), *ours.get("interfaces", ())],
            "ips": [*(prev.get("ips") or []), *ips],
            "routes": [*(prev.get("routes") or []), *ours.get("routes", ())], "dns": dns}
