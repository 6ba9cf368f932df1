"""List query parsing (what the client puts in the query string) and list_collection."""

from __future__ import annotations

from typing import Any

import pytest

from tungsten.api.context import RequestCtx
from tungsten.api.core import ConfigApi
from tungsten.api.errors import ApiError
from tungsten.api.listing import list_collection, parse_filters, parse_query, truthy
from tungsten.store import open_store

PROJECT = ["default-domain", "default-project"]


# -- truthiness -----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["True", "true", "TRUE", "yes-true", True])
def test_truthy(value: Any) -> None:
    assert truthy(value)


@pytest.mark.parametrize("value", ["False", "false", "", "1", "yes", None, False])
def test_falsy(value: Any) -> None:
    # TF counts a value as set only when it contains "true"
    assert not truthy(value)


def test_query_booleans_from_strings() -> None:
    q = parse_query({"detail": "True", "count": "False", "shared": "False"})
    assert (q.detail, q.count, q.shared) == (True, False, False)
    q = parse_query({"detail": "False", "count": "true", "shared": "True"})
    assert (q.detail, q.count, q.shared) == (False, True, True)
    q = parse_query({})
    assert (q.detail, q.count, q.shared) == (False, False, False)


# -- comma lists ----------------------------------------------------------------------------------
def test_csv_lists() -> None:
    q = parse_query({
        "parent_id": "u1,u2",
        "back_ref_id": "b1",
        "obj_uuids": "o1,,o2,",
        "fields": "network_ipam_refs,routing_instances",
        "fq_names": "default-domain:p:vn1,default-domain:p:vn2",
    })
    assert q.parent_ids == ["u1", "u2"]
    assert q.back_ref_ids == ["b1"]
    assert q.obj_uuids == ["o1", "o2"]
    assert q.fields == ["network_ipam_refs", "routing_instances"]
    assert q.fq_names == [["default-domain", "p", "vn1"], ["default-domain", "p", "vn2"]]


def test_csv_lists_from_bulk_json() -> None:
    # /list-bulk-collection may send real lists
    q = parse_query({"obj_uuids": ["o1", "o2"], "back_ref_id": [], "parent_id": None})
    assert q.obj_uuids == ["o1", "o2"]
    assert q.back_ref_ids == []
    assert q.parent_ids is None


def test_absent_anchors_are_none() -> None:
    q = parse_query({})
    assert q.parent_ids is None and q.back_ref_ids is None
    assert q.obj_uuids is None and q.fq_names is None and q.parent_fq_name is None
    assert q.fields == []
    assert q.filters == {}
    assert q.page_limit is None and q.page_marker is None


def test_parent_fq_name_str_and_type() -> None:
    q = parse_query({"parent_fq_name_str": "default-domain:default-project",
                     "parent_type": "project"})
    assert q.parent_fq_name == PROJECT
    assert q.parent_type == "project"
    assert parse_query({"parent_fq_name_str": ""}).parent_fq_name is None


# -- filters -----------------------------------------------------------------------------------
def test_filters_json_values() -> None:
    f = parse_filters('display_name=="newname",is_shared==false,mac_aging_time==300')
    assert f == {"display_name": ["newname"], "is_shared": [False], "mac_aging_time": [300]}


def test_filters_raw_values_when_not_json() -> None:
    assert parse_filters("display_name==plain") == {"display_name": ["plain"]}


def test_filters_repeated_keys() -> None:
    f = parse_filters('display_name=="a",display_name=="b",is_shared==true')
    assert f == {"display_name": ["a", "b"], "is_shared": [True]}


def test_filters_with_commas_in_values() -> None:
    f = parse_filters('display_name=="a,b",x=={"k": [1, 2]}')
    assert f == {"display_name": ["a,b"], "x": [{"k": [1, 2]}]}


def test_filters_from_dict() -> None:
    assert parse_filters({"a": 1, "b": [1, 2]}) == {"a": [1], "b": [1, 2]}
    assert parse_filters(None) == {}
    assert parse_filters("") == {}


@pytest.mark.parametrize("bad", ["display_name", "display_name=x", "==x", ',a=="x"'])
def test_malformed_filters(bad: str) -> None:
    with pytest.raises(ApiError) as e:
        parse_filters(bad)
    assert e.value.status == 400
    assert "Invalid filter" in e.value.message


def test_malformed_filters_through_parse_query() -> None:
    with pytest.raises(ApiError) as e:
        parse_query({"filters": "nonsense"})
    assert e.value.status == 400


# -- pagination ---------------------------------------------------------------------------------
def test_page_limit() -> None:
    assert parse_query({"page_limit": "10"}).page_limit == 10
    assert parse_query({"page_limit": 3}).page_limit == 3
    assert parse_query({"page_limit": ""}).page_limit is None


@pytest.mark.parametrize("bad", ["0", "-1", "ten", "1.5", 0])
def test_bad_page_limit(bad: Any) -> None:
    with pytest.raises(ApiError) as e:
        parse_query({"page_limit": bad})
    assert e.value.status == 400
    assert "page_limit" in e.value.message


def test_page_marker() -> None:
    assert parse_query({"page_marker": "None"}).page_marker is None
    assert parse_query({"page_marker": ""}).page_marker is None
    assert parse_query({"page_marker": "shared:abc"}).page_marker == "shared:abc"


# -- list_collection over a real ConfigApi --------------------------------------------------------
@pytest.fixture
def api() -> ConfigApi:
    return ConfigApi(open_store("sqlite:///:memory:"))


CTX = RequestCtx()


def make_vn(api: ConfigApi, name: str, **props: Any) -> str:
    body = {"virtual-network": {"fq_name": [*PROJECT, name], "parent_type": "project", **props}}
    return str(api.create("virtual-network", body, CTX)["virtual-network"]["uuid"])


def names(result: dict[str, Any], plural: str = "virtual-networks") -> list[str]:
    return [e["fq_name"][-1] for e in result[plural]]


def test_list_all_and_count(api: ConfigApi) -> None:
    make_vn(api, "vn-a")
    make_vn(api, "vn-b")
    all_vns = names(list_collection(api, "virtual-network", {}, CTX))
    assert {"vn-a", "vn-b", "default-virtual-network", "ip-fabric"} <= set(all_vns)
    count = list_collection(api, "virtual-network", {"count": "True"}, CTX)
    assert count == {"virtual-networks": {"count": len(all_vns)}}


def test_list_filters(api: ConfigApi) -> None:
    make_vn(api, "vn-a", display_name="alpha")
    make_vn(api, "vn-b", display_name="beta", is_shared=True)
    r = list_collection(api, "virtual-network", {"filters": 'display_name=="alpha"'}, CTX)
    assert names(r) == ["vn-a"]
    r = list_collection(api, "virtual-network",
                        {"filters": 'display_name=="alpha",display_name=="beta"'}, CTX)
    assert sorted(names(r)) == ["vn-a", "vn-b"]
    r = list_collection(api, "virtual-network", {"filters": "is_shared==true"}, CTX)
    assert names(r) == ["vn-b"]
    # keys that are not properties are ignored when no key is a property
    r = list_collection(api, "virtual-network", {"filters": 'nope=="x"'}, CTX)
    assert {"vn-a", "vn-b"} <= set(names(r))


def test_list_anchors(api: ConfigApi) -> None:
    a = make_vn(api, "vn-a")
    make_vn(api, "vn-b")
    r = list_collection(api, "virtual-network", {"obj_uuids": a}, CTX)
    assert names(r) == ["vn-a"]
    r = list_collection(api, "virtual-network", {"fq_names": "default-domain:default-project:vn-b"},
                        CTX)
    assert names(r) == ["vn-b"]
    r = list_collection(api, "virtual-network",
                        {"parent_fq_name_str": "default-domain:nowhere"}, CTX)
    assert r == {"virtual-networks": []}
    r = list_collection(api, "routing-instance", {"parent_id": a}, CTX)
    assert names(r, "routing-instances") == ["vn-a"]


def test_list_pagination(api: ConfigApi) -> None:
    for i in range(5):
        make_vn(api, f"page-{i}")
    total = len(list_collection(api, "virtual-network", {}, CTX)["virtual-networks"])
    seen: list[str] = []
    marker: str | None = None
    for _ in range(total):
        params: dict[str, Any] = {"page_limit": "2"}
        if marker:
            params["page_marker"] = marker
        r = list_collection(api, "virtual-network", params, CTX)
        assert len(r["virtual-networks"]) <= 2
        seen += [e["uuid"] for e in r["virtual-networks"]]
        marker = r["marker"]
        if marker is None:
            break
    assert len(seen) == total == len(set(seen))


def test_list_detail(api: ConfigApi) -> None:
    u = make_vn(api, "vn-d")
    r = list_collection(api, "virtual-network", {"obj_uuids": u, "detail": "True"}, CTX)
    (entry,) = r["virtual-networks"]
    body = entry["virtual-network"]
    assert body["uuid"] == u and body["name"] == "vn-d"
    assert "routing_instances" not in body  # children only when asked for
    r = list_collection(api, "virtual-network",
                        {"obj_uuids": u, "detail": "True", "fields": "routing_instances"}, CTX)
    assert r["virtual-networks"][0]["virtual-network"]["routing_instances"][0]["to"][-1] == "vn-d"
