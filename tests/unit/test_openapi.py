"""The OpenAPI document generated from the schema: complete, faithful to it, and valid."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tungsten.api.openapi import action_path, openapi_document
from tungsten.api.server import ACTIONS
from tungsten.model.schema import load_schema

URL = "http://127.0.0.1:8082"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return openapi_document(load_schema(), URL)


def resolve(doc: dict[str, Any], s: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in s:
        name = s["$ref"].rsplit("/", 1)[-1]
        s = doc["components"]["schemas"][name]
    return s


def test_document_validates_as_openapi_3_0(doc: dict[str, Any]) -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    assert doc["openapi"].startswith("3.0.")
    validator.validate(doc)


def test_every_resource_type_has_its_paths(doc: dict[str, Any]) -> None:
    schema = load_schema()
    assert len(schema.types) >= 50
    for rt in schema.types.values():
        coll = doc["paths"][f"/{rt.plural}"]
        assert set(coll) >= {"get", "post"}, rt.name
        item = doc["paths"][f"/{rt.name}/{{id}}"]
        assert set(item) >= {"get", "put", "delete"}, rt.name
        body = coll["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["required"] == [rt.name]
        assert resolve(doc, body["properties"][rt.name])["title"] == rt.name
        for op in (coll["post"], coll["get"], item["get"], item["put"], item["delete"]):
            assert "200" in op["responses"]
            assert all(s.startswith("4") for s in op["responses"] if s != "200")
        params = {p["name"] for p in coll["get"]["parameters"]}
        assert params >= {"filters", "page_limit", "page_marker", "fields", "detail", "count",
                          "parent_id", "back_ref_id", "obj_uuids"}


def test_every_complex_type_is_a_component(doc: dict[str, Any]) -> None:
    schema = load_schema()
    comps = doc["components"]["schemas"]
    for name, fields in schema.complex.items():
        c = comps[name]
        assert c["additionalProperties"] is False and c["nullable"] is True
        assert set(c["properties"]) == set(fields)


def test_every_action_has_its_path(doc: dict[str, Any]) -> None:
    for name, uri, method in ACTIONS:
        item = doc["paths"][action_path(uri)]
        op = item[method.lower()]
        assert op["operationId"] == "action_" + name.replace("-", "_")
        assert "200" in op["responses"]
    assert "/virtual-network/{id}/ip-alloc" in doc["paths"]
    assert "get" in doc["paths"]["/aaa-mode"] and "put" in doc["paths"]["/aaa-mode"]
    ref_update = doc["paths"]["/ref-update"]["post"]["requestBody"]["content"]
    assert set(ref_update["application/json"]["schema"]["required"]) == {
        "type", "uuid", "ref-type", "operation"}


def test_errors_are_plain_text(doc: dict[str, Any]) -> None:
    for status in ("400", "401", "403", "404", "409"):
        resp = doc["components"]["responses"][f"E{status}"]
        assert set(resp["content"]) == {"text/plain"}
    ops = [op for item in doc["paths"].values() for k, op in item.items() if k != "parameters"]
    op_ids = [op["operationId"] for op in ops]
    assert len(op_ids) == len(set(op_ids)), "operationIds must be unique"


def test_virtual_network_spot_checks(doc: dict[str, Any]) -> None:
    vn = doc["components"]["schemas"]["virtual-network"]
    props = vn["properties"]
    assert vn["additionalProperties"] is False
    for p in ("virtual_network_properties", "network_ipam_refs", "is_shared", "fq_name",
              "uuid", "parent_type", "display_name", "id_perms", "perms2", "annotations"):
        assert p in props, p
    assert props["parent_type"]["enum"] == ["project", None]
    cat = props["virtual_network_category"]
    assert set(cat["enum"]) == {"infra", "tenant", "internal", "routed", None}
    assert cat["nullable"] is True and cat["type"] == "string"
    assert props["mac_aging_time"] == {"type": "integer", "nullable": True, "minimum": 0,
                                       "maximum": 86400, "default": 300}
    assert props["virtual_network_properties"] == {
        "$ref": "#/components/schemas/VirtualNetworkType"}
    # refs carry their link attribute type
    refs = props["network_ipam_refs"]
    assert refs["type"] == "array" and refs["nullable"] is True
    entry = resolve(doc, refs["items"])
    assert set(entry["properties"]) >= {"to", "uuid", "attr"}
    assert entry["properties"]["attr"] == {"$ref": "#/components/schemas/VnSubnetsType"}
    ipam_subnets = resolve(doc, entry["properties"]["attr"])["properties"]["ipam_subnets"]
    assert ipam_subnets["type"] == "array"
    assert resolve(doc, ipam_subnets["items"])["title"] == "IpamSubnetType"
    no_attr = resolve(doc, props["tag_refs"]["items"])["properties"]["attr"]
    assert "$ref" not in no_attr
    # children and back refs are read-only
    assert props["routing_instances"]["readOnly"] is True


def test_autonomous_system_range(doc: dict[str, Any]) -> None:
    schema = load_schema()
    seen = 0
    for rt in schema.types.values():
        spec = rt.props.get("autonomous_system")
        if spec is None:
            continue
        s = doc["components"]["schemas"][rt.name]["properties"]["autonomous_system"]
        assert s["type"] == "integer"
        assert spec.range is not None
        assert (s["minimum"], s["maximum"]) == spec.range
        seen += 1
    assert seen >= 1
    gsc = doc["components"]["schemas"]["global-system-config"]["properties"]
    assert gsc["autonomous_system"]["minimum"] == 1
    assert gsc["autonomous_system"]["maximum"] >= 65535


def test_servers_and_cache(doc: dict[str, Any]) -> None:
    schema = load_schema()
    assert doc["servers"] == [{"url": URL}]
    start = time.perf_counter()
    other = openapi_document(schema, "http://[::1]:9")
    assert time.perf_counter() - start < 0.05, "the document must be cached per schema"
    assert other["servers"] == [{"url": "http://[::1]:9"}]
    assert other["paths"] is doc["paths"]
    assert doc["servers"] == [{"url": URL}]
