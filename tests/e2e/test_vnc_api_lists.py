"""Collection listing with every parameter TF's client sends (vnc-api.md §2.5), plus the
server-only pagination parameters over raw HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from vnc_api import vnc_api as v
from vnc_api.vnc_api import OP_GET, OP_POST

from tests.e2e.test_vnc_api_workflow import (
    V4_LEN,
    V4_NET,
    make_ipam,
    make_port,
    make_project,
    make_vn,
    raw,
)


class Spy:
    """Records (method, uri) of every request the client makes, without changing them."""

    def __init__(self, vnc: Any) -> None:
        self.calls: list[tuple[str, str]] = []
        self._orig = vnc._request_server

        def wrapper(op: Any, url: str, *args: Any, **kwargs: Any) -> Any:
            self.calls.append(({OP_POST: "POST", OP_GET: "GET"}.get(op, str(op)), url))
            return self._orig(op, url, *args, **kwargs)

        vnc._request_server = wrapper
        self._vnc = vnc

    def restore(self) -> None:
        self._vnc._request_server = self._orig


@pytest.fixture
def spy(vnc: Any) -> Iterator[Spy]:
    s = Spy(vnc)
    yield s
    s.restore()


def uuids(listing: dict[str, Any], key: str = "virtual-networks") -> list[str]:
    return [e["uuid"] for e in listing[key]]


@pytest.fixture
def two_tenants(vnc: Any) -> dict[str, Any]:
    """Two projects, with networks red+green in one and blue in the other."""
    a, b = make_project(vnc, "tenant-a"), make_project(vnc, "tenant-b")
    ipam = make_ipam(vnc, a)
    return {
        "a": a, "b": b, "ipam": ipam,
        "red": make_vn(vnc, a, "red", ipam, [(V4_NET, V4_LEN)], display_name="Red"),
        "green": make_vn(vnc, a, "green", display_name="Green"),
        "blue": make_vn(vnc, b, "blue", display_name="Blue", is_shared=True),
    }


def test_default_list_shape(vnc: Any, two_tenants: dict[str, Any]) -> None:
    got = vnc.virtual_networks_list()
    entries = {e["uuid"]: e for e in got["virtual-networks"]}
    red = two_tenants["red"]
    assert entries[red.uuid] == {"uuid": red.uuid, "fq_name": red.fq_name,
                                 "href": f"{raw(vnc)}/virtual-network/{red.uuid}"}
    # the boot-time networks are there too
    fq = {tuple(e["fq_name"]) for e in entries.values()}
    assert ("default-domain", "default-project", "ip-fabric") in fq
    assert ("default-domain", "default-project", "default-virtual-network") in fq


def test_list_by_parent(vnc: Any, two_tenants: dict[str, Any]) -> None:
    t = two_tenants
    by_id = vnc.virtual_networks_list(parent_id=t["a"].uuid)
    assert uuids(by_id) == [t["red"].uuid, t["green"].uuid]  # creation order
    by_ids = vnc.virtual_networks_list(parent_id=[t["a"].uuid, t["b"].uuid])
    assert sorted(uuids(by_ids)) == sorted([t["red"].uuid, t["green"].uuid, t["blue"].uuid])
    by_fq = vnc.virtual_networks_list(parent_fq_name=t["b"].fq_name)
    assert uuids(by_fq) == [t["blue"].uuid]
    # parent_fq_name takes precedence over parent_id
    both = vnc.virtual_networks_list(parent_fq_name=t["b"].fq_name, parent_id=t["a"].uuid)
    assert uuids(both) == [t["blue"].uuid]
    # a parent that does not exist: an empty list
    assert vnc.virtual_networks_list(parent_fq_name=["default-domain", "nope"]) == {
        "virtual-networks": []}
    # parent_type (server only) restricts parent_fq_name_str to one parent type
    r = requests.get(f"{raw(vnc)}/virtual-networks", params={
        "parent_fq_name_str": "default-domain:tenant-a", "parent_type": "project"}, timeout=10)
    assert sorted(uuids(r.json())) == sorted([t["red"].uuid, t["green"].uuid])


def test_list_by_back_ref_id(vnc: Any, two_tenants: dict[str, Any]) -> None:
    t = two_tenants
    p1 = make_port(vnc, t["a"], "p1", t["red"])
    p2 = make_port(vnc, t["a"], "p2", t["green"])
    make_port(vnc, t["b"], "p3", t["blue"])
    got = vnc.virtual_machine_interfaces_list(back_ref_id=t["red"].uuid)
    assert uuids(got, "virtual-machine-interfaces") == [p1.uuid]
    got = vnc.virtual_machine_interfaces_list(back_ref_id=[t["red"].uuid, t["green"].uuid])
    assert sorted(uuids(got, "virtual-machine-interfaces")) == sorted([p1.uuid, p2.uuid])
    # anchors combine as AND: parent and back ref
    got = vnc.virtual_machine_interfaces_list(parent_id=t["b"].uuid, back_ref_id=t["red"].uuid)
    assert got == {"virtual-machine-interfaces": []}
    # networks referring to the ipam
    got = vnc.virtual_networks_list(back_ref_id=t["ipam"].uuid)
    assert uuids(got) == [t["red"].uuid]
    # the client short-circuits an empty list of ids
    assert vnc.virtual_networks_list(back_ref_id=[]) == {"virtual-networks": []}


def test_list_by_obj_uuids_and_fq_names(vnc: Any, two_tenants: dict[str, Any]) -> None:
    t = two_tenants
    got = vnc.virtual_networks_list(obj_uuids=[t["red"].uuid, t["blue"].uuid])
    assert sorted(uuids(got)) == sorted([t["red"].uuid, t["blue"].uuid])
    got = vnc.virtual_networks_list(obj_uuids=[t["red"].uuid], parent_id=t["b"].uuid)
    assert uuids(got) == []
    # a uuid of another type is not listed
    got = vnc.virtual_networks_list(obj_uuids=[t["a"].uuid, t["green"].uuid])
    assert uuids(got) == [t["green"].uuid]
    got = vnc.virtual_networks_list(fq_names=[t["green"].fq_name, t["blue"].fq_name,
                                              ["default-domain", "x", "missing"]])
    assert sorted(uuids(got)) == sorted([t["green"].uuid, t["blue"].uuid])
    got = vnc.virtual_networks_list(fq_names=[["default-domain", "x", "missing"]])
    assert got == {"virtual-networks": []}
    assert vnc.virtual_networks_list(obj_uuids=[]) == {"virtual-networks": []}


def test_more_than_25_uuids_use_list_bulk_collection(vnc: Any, spy: Spy) -> None:
    project = make_project(vnc)
    made = [vnc.network_ipam_create(v.NetworkIpam(f"ipam-{i:02d}", project)) for i in range(30)]
    spy.calls.clear()
    got = vnc.network_ipams_list(obj_uuids=made)
    assert ("POST", "/list-bulk-collection") in spy.calls
    assert sorted(uuids(got, "network-ipams")) == sorted(made)
    # detail and count go the same way
    objs = vnc.network_ipams_list(obj_uuids=made[:28], detail=True)
    assert sorted(o.uuid for o in objs) == sorted(made[:28])
    assert all(isinstance(o, v.NetworkIpam) and o.name.startswith("ipam-") for o in objs)
    assert vnc.network_ipams_list(obj_uuids=made, count=True) == {
        "network-ipams": {"count": 30}}
    # and so does a long back_ref_id list (networks referring to any of the ipams)
    vn = make_vn(vnc, project, "net", vnc.network_ipam_read(id=made[3]), [(V4_NET, V4_LEN)])
    spy.calls.clear()
    got = vnc.virtual_networks_list(back_ref_id=made)
    assert ("POST", "/list-bulk-collection") in spy.calls
    assert uuids(got) == [vn.uuid]
    # raw bulk body: JSON booleans and comma strings, with filters
    r = requests.post(f"{raw(vnc)}/list-bulk-collection", json={
        "type": "network-ipam", "obj_uuids": ",".join(made), "detail": False,
        "count": False, "shared": False, "fields": "display_name",
        "filters": 'display_name=="ipam-07"'}, timeout=10)
    assert r.status_code == 200
    assert [(e["uuid"], e["display_name"]) for e in r.json()["network-ipams"]] == [
        (made[7], "ipam-07")]
    r = requests.post(f"{raw(vnc)}/list-bulk-collection", json={"obj_uuids": made[0]},
                      timeout=10)
    assert r.status_code == 400


def test_list_fields_and_detail(vnc: Any, two_tenants: dict[str, Any]) -> None:
    t = two_tenants
    port = make_port(vnc, t["a"], "p", t["red"])
    got = vnc.virtual_networks_list(parent_id=t["a"].uuid,
                                    fields=["display_name", "network_ipam_refs"])
    by_uuid = {e["uuid"]: e for e in got["virtual-networks"]}
    assert by_uuid[t["red"].uuid]["display_name"] == "Red"
    assert by_uuid[t["red"].uuid]["network_ipam_refs"][0]["uuid"] == t["ipam"].uuid
    assert by_uuid[t["green"].uuid]["display_name"] == "Green"
    assert "network_ipam_refs" not in by_uuid[t["green"].uuid]
    assert "virtual_network_network_id" not in by_uuid[t["red"].uuid]
    # detail returns whole objects
    objs = vnc.virtual_networks_list(parent_id=t["a"].uuid, detail=True)
    assert [type(o) for o in objs] == [v.VirtualNetwork, v.VirtualNetwork]
    red = next(o for o in objs if o.uuid == t["red"].uuid)
    assert red.get_display_name() == "Red"
    assert red.get_virtual_network_network_id() == t["red"].get_virtual_network_network_id()
    assert red.get_network_ipam_refs()[0]["attr"].ipam_subnets[0].default_gateway == (
        "192.0.2.254")
    assert red.get_fq_name() == t["red"].fq_name
    r = requests.get(f"{raw(vnc)}/virtual-networks",
                     params={"parent_id": t["a"].uuid, "detail": "True"}, timeout=10)
    inner = r.json()["virtual-networks"][0]["virtual-network"]
    assert inner["name"] == "red" and inner["href"].endswith(f"/virtual-network/{t['red'].uuid}")
    assert "routing_instances" not in inner  # children only when asked for
    # detail with back-ref fields adds them
    objs = vnc.virtual_networks_list(parent_id=t["a"].uuid, detail=True,
                                     fields=["virtual_machine_interface_back_refs"])
    red = next(o for o in objs if o.uuid == t["red"].uuid)
    green = next(o for o in objs if o.uuid == t["green"].uuid)
    assert [r["uuid"] for r in red.get_virtual_machine_interface_back_refs()] == [port.uuid]
    assert green.get_virtual_machine_interface_back_refs() is None


def test_list_count(vnc: Any, two_tenants: dict[str, Any]) -> None:
    t = two_tenants
    assert vnc.virtual_networks_list(parent_id=t["a"].uuid, count=True) == {
        "virtual-networks": {"count": 2}}
    total = len(vnc.virtual_networks_list()["virtual-networks"])
    assert vnc.virtual_networks_list(count=True)["virtual-networks"]["count"] == total
    assert vnc.virtual_networks_list(count=True, filters={"display_name": "Blue"}) == {
        "virtual-networks": {"count": 1}}


def test_list_filters(vnc: Any, two_tenants: dict[str, Any]) -> None:
    t = two_tenants
    got = vnc.virtual_networks_list(filters={"display_name": "Green"})
    assert uuids(got) == [t["green"].uuid]
    got = vnc.virtual_networks_list(filters={"display_name": ["Green", "Blue"]})
    assert sorted(uuids(got)) == sorted([t["green"].uuid, t["blue"].uuid])
    got = vnc.virtual_networks_list(parent_id=t["a"].uuid, filters={"is_shared": False})
    assert sorted(uuids(got)) == sorted([t["red"].uuid, t["green"].uuid])
    got = vnc.virtual_networks_list(filters={"is_shared": True, "display_name": "Blue"})
    assert uuids(got) == [t["blue"].uuid]
    # a dict-valued property matches when the given object is a subset
    got = vnc.virtual_networks_list(parent_id=t["a"].uuid,
                                    filters={"id_perms": {"user_visible": True}})
    assert len(uuids(got)) == 2
    got = vnc.virtual_networks_list(filters={"display_name": "nobody"})
    assert got == {"virtual-networks": []}
    # only non-property keys: ignored
    got = vnc.virtual_networks_list(parent_id=t["a"].uuid, filters={"no_such_field": "x"})
    assert len(uuids(got)) == 2
    r = requests.get(f"{raw(vnc)}/virtual-networks", params={"filters": "display_name"},
                     timeout=10)
    assert r.status_code == 400 and "filter" in r.text.lower()


def test_list_shared(vnc: Any, two_tenants: dict[str, Any]) -> None:
    t = two_tenants
    plain = vnc.virtual_networks_list(parent_id=t["a"].uuid)
    shared = vnc.virtual_networks_list(parent_id=t["a"].uuid, shared=True)
    # without auth every object is visible already; shared adds nothing outside the anchors
    assert sorted(uuids(shared)) == sorted(uuids(plain))
    r = requests.get(f"{raw(vnc)}/virtual-networks",
                     params={"shared": "true", "parent_id": t["b"].uuid}, timeout=10)
    assert uuids(r.json()) == [t["blue"].uuid]


def test_exclude_hrefs(controller: Any) -> None:
    api = v.VncApi(api_server_host="127.0.0.1", api_server_port=controller.port,
                   auth_type="noauth", exclude_hrefs=True)
    project = make_project(api, "nohref")
    vn = make_vn(api, project, "net")
    got = api.virtual_networks_list(parent_id=project.uuid)
    assert got == {"virtual-networks": [{"uuid": vn.uuid, "fq_name": vn.fq_name}]}
    r = requests.get(f"{controller.url}/virtual-network/{vn.uuid}",
                     params={"exclude_hrefs": ""}, timeout=10).json()["virtual-network"]
    assert "href" not in r and "parent_href" not in r
    assert all("href" not in ref for ref in r.get("routing_instances", []))
    # set_exclude_hrefs on a client made without it
    api2 = v.VncApi(api_server_host="127.0.0.1", api_server_port=controller.port,
                    auth_type="noauth")
    assert "href" in api2.virtual_networks_list(parent_id=project.uuid)["virtual-networks"][0]
    api2.set_exclude_hrefs()
    assert "href" not in api2.virtual_networks_list(
        parent_id=project.uuid)["virtual-networks"][0]
    assert api2.virtual_network_read(id=vn.uuid).uuid == vn.uuid
    # in a bulk list too
    ipams = [api2.network_ipam_create(v.NetworkIpam(f"i{n}", project)) for n in range(26)]
    got = api2.network_ipams_list(obj_uuids=ipams)["network-ipams"]
    assert len(got) == 26 and all("href" not in e for e in got)


def test_pagination_over_raw_http(vnc: Any) -> None:
    project = make_project(vnc)
    made = {vnc.network_ipam_create(v.NetworkIpam(f"ipam-{i}", project)) for i in range(5)}
    url = f"{raw(vnc)}/network-ipams"
    seen: list[str] = []
    marker: str | None = None
    pages = 0
    while True:
        params = {"parent_id": project.uuid, "page_limit": "2"}
        if marker is not None:
            params["page_marker"] = marker
        r = requests.get(url, params=params, timeout=10)
        assert r.status_code == 200
        body = r.json()
        assert "marker" in body
        page = uuids(body, "network-ipams")
        assert len(page) <= 2
        seen.extend(page)
        pages += 1
        marker = body["marker"]
        if marker is None:
            break
        assert marker == page[-1]
    assert pages == 3 and len(seen) == 5 and set(seen) == made
    # a shared: marker is accepted too
    first = sorted(made)[0]
    r = requests.get(url, params={"parent_id": project.uuid, "page_limit": "10",
                                  "page_marker": f"shared:{first}"}, timeout=10)
    assert set(uuids(r.json(), "network-ipams")) == made - {first}
    assert r.json()["marker"] is None
    for bad in ("0", "-1", "many"):
        r = requests.get(url, params={"page_limit": bad}, timeout=10)
        assert r.status_code == 400, bad
    # the same through the bulk endpoint
    r = requests.post(f"{raw(vnc)}/list-bulk-collection", json={
        "type": "network-ipam", "parent_id": project.uuid, "page_limit": 4}, timeout=10)
    body = r.json()
    assert len(body["network-ipams"]) == 4 and body["marker"] is not None
