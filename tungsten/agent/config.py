"""What the agent asks of the config API (raw HTTP, TF's VNC REST shapes): its own
virtual-router object, and ports it creates for local callers (a VMI plus an instance-ip)."""

from __future__ import annotations

import re
from typing import Any

import aiohttp

DEFAULT_PROJECT = "default-domain:default-project"
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                     r"[0-9a-fA-F]{12}$")
TIMEOUT = aiohttp.ClientTimeout(total=30)


class ConfigApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ConfigClient:
    def __init__(self, http: aiohttp.ClientSession, base_url: str) -> None:
        self._http = http
        self.base = base_url.rstrip("/")

    async def _call(self, method: str, path: str, body: Any = None,
                    ok_missing: bool = False) -> Any:
        try:
            async with self._http.request(method, self.base + path, json=body,
                                          timeout=TIMEOUT) as r:
                if r.status == 404 and ok_missing:
                    return None
                if r.status >= 400:
                    text = (await r.text()).strip()
                    raise ConfigApiError(r.status, f"{method} {path}: {r.status} {text}")
                if r.content_type == "application/json":
                    return await r.json()
                return None
        except aiohttp.ClientError as e:
            raise ConfigApiError(503, f"config API {self.base} unreachable: {e}") from None

    async def fq_name_to_id(self, type_: str, fq_name: list[str]) -> str | None:
        try:
            out = await self._call("POST", "/fqname-to-id",
                                   {"type": type_, "fq_name": fq_name}, ok_missing=True)
        except ConfigApiError as e:
            if e.status == 404:
                return None
            raise
        return None if out is None else str(out["uuid"])

    async def register_vrouter(self, node: str, underlay_ip: str) -> str:
        """Create (or update) the ``virtual-router`` object named after the node."""
        fq = ["default-global-system-config", node]
        body = {"virtual-router": {"fq_name": fq, "parent_type": "global-system-config",
                                   "virtual_router_ip_address": underlay_ip}}
        try:
            out = await self._call("POST", "/virtual-routers", body)
            return str(out["virtual-router"]["uuid"])
        except ConfigApiError as e:
            if e.status != 409:
                raise
        uuid = await self.fq_name_to_id("virtual-router", fq)
        if uuid is None:
            raise ConfigApiError(409, f"virtual-router {node} conflicts but cannot be found")
        await self._call("PUT", f"/virtual-router/{uuid}",
                         {"virtual-router": {"virtual_router_ip_address": underlay_ip}})
        return uuid

    async def network(self, network: str, project: str | None) -> tuple[str, list[str]]:
        """(uuid, fq_name) of a network given as a uuid, 'domain:project:vn' or a name."""
        if UUID_RE.match(network):
            out = await self._call("GET", f"/virtual-network/{network}", ok_missing=True)
            if out is None:
                raise ConfigApiError(404, f"no virtual-network {network}")
            return network, list(out["virtual-network"]["fq_name"])
        fq = network.split(":") if ":" in network else \
            [*(project or DEFAULT_PROJECT).split(":"), network]
        uuid = await self.fq_name_to_id("virtual-network", fq)
        if uuid is None:
            raise ConfigApiError(404, f"no virtual-network {':'.join(fq)}")
        return uuid, fq

    async def create_port(self, network: str, name: str, project: str | None,
                          node: str, *, ip: str | None = None, mac: str | None = None,
                          uuid: str | None = None) -> str:
        """A VMI on ``network`` bound to ``node``, with an instance-ip (``ip`` when given,
        else allocated), ``mac`` and ``uuid`` when given; idempotent by name (the uuid of
        a port of that name made before is returned)."""
        vn_uuid, vn_fq = await self.network(network, project)
        proj = project.split(":") if project else vn_fq[:-1]
        fq = [*proj, name]
        vmi: dict[str, Any] = {
            "fq_name": fq, "parent_type": "project",
            "virtual_network_refs": [{"to": vn_fq, "uuid": vn_uuid}],
            "virtual_machine_interface_bindings": {
                "key_value_pair": [{"key": "host_id", "value": node}]},
        }
        if mac:
            vmi["virtual_machine_interface_mac_addresses"] = {"mac_address": [mac]}
        if uuid:
            vmi["uuid"] = uuid
        body = {"virtual-machine-interface": vmi}
        try:
            out = await self._call("POST", "/virtual-machine-interfaces", body)
            uuid = str(out["virtual-machine-interface"]["uuid"])
        except ConfigApiError as e:
            found = await self.fq_name_to_id("virtual-machine-interface", fq) \
                if e.status == 409 else None
            if found is None:
                raise
            uuid = found  # a retried create (e.g. CNI ADD again): adopt the existing port
        iip: dict[str, Any] = {
            "fq_name": [uuid],
            "virtual_network_refs": [{"to": vn_fq, "uuid": vn_uuid}],
            "virtual_machine_interface_refs": [{"to": fq, "uuid": uuid}],
        }
        if ip:
            iip["instance_ip_address"] = ip
        try:
            await self._call("POST", "/instance-ips", {"instance-ip": iip})
        except ConfigApiError as e:
            # 409: a retried create (the instance-ip exists), or the address is taken
            if e.status != 409 or not await self._has_instance_ip(uuid):
                raise
        return uuid

    async def _has_instance_ip(self, vmi: str) -> bool:
        out = await self._call("GET", f"/virtual-machine-interface/{vmi}", ok_missing=True)
        return bool(out and out["virtual-machine-interface"].get("instance_ip_back_refs"))

    async def delete_port(self, uuid: str) -> None:
        """Delete a VMI and its instance-ips; a port already gone is fine."""
        out = await self._call("GET", f"/virtual-machine-interface/{uuid}", ok_missing=True)
        if out is None:
            return
        for ref in out["virtual-machine-interface"].get("instance_ip_back_refs", []):
            await self._call("DELETE", f"/instance-ip/{ref['uuid']}", ok_missing=True)
        await self._call("DELETE", f"/virtual-machine-interface/{uuid}", ok_missing=True)
