"""scripts/gen-schema.py: its parsers on small inputs, and that it reproduces the committed JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen-schema.py"
DATA = ROOT / "tungsten" / "model" / "data"
REFERENCE = ROOT.parent / "shared" / "reference"


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_schema", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_split_top(gen: ModuleType) -> None:
    assert gen.split_top("a, b,c") == ["a", "b", "c"]
    assert gen.split_top("x:string['a', 'b'], y:integer[1, 2]") == [
        "x:string['a', 'b']", "y:integer[1, 2]"]
    assert gen.split_top("f(a,b), g") == ["f(a,b)", "g"]
    assert gen.split_top("k:string='a,b', m") == ["k:string='a,b'", "m"]
    assert gen.split_top("") == []
    assert gen.split_top("a;b", sep=";") == ["a", "b"]


def test_parse_restriction(gen: ModuleType) -> None:
    assert gen.parse_restriction(None) == {}
    assert gen.parse_restriction("['x', 'y']") == {"enum": ["x", "y"]}
    assert gen.parse_restriction("[0, 7]") == {"range": [0, 7]}
    assert gen.parse_restriction("[]") == {}


def test_parse_prop(gen: ModuleType) -> None:
    assert gen.parse_prop("name:string") == ("name", {"type": "string"})
    assert gen.parse_prop("asn:integer[1, 4294967295](required)") == (
        "asn", {"type": "integer", "range": [1, 4294967295], "required": True})
    assert gen.parse_prop("vid:integer(system-only)") == (
        "vid", {"type": "integer", "system": True})
    assert gen.parse_prop("mesh:boolean=True") == ("mesh", {"type": "boolean", "default": True})
    assert gen.parse_prop("cat:string['a', 'b']='a'") == (
        "cat", {"type": "string", "enum": ["a", "b"], "default": "a"})
    assert gen.parse_prop(" props:VirtualNetworkType ") == (
        "props", {"type": "VirtualNetworkType"})
    with pytest.raises(ValueError, match="cannot parse property"):
        gen.parse_prop("no type here")


SYNTHETIC_TYPES = """\
# a comment line
== config-root  (class ConfigRoot, object_type config_root)
  parent_types: ['config-root']  default fq_name: ['default-config-root']  default parent_type: None
  props:
  list props: []  map props: ['annotations']
  refs: tag_refs->tag
  children: widgets(widget), tags(tag)
  back_refs:
== widget  (class Widget, object_type widget)
  parent_types: ['config-root', 'project']  default fq_name: ['default-widget']  default parent_type: None
  props: size:integer[1, 9]=3, color:string['red', 'blue'](required), labels:Labels
  list props: ['labels']  map props: ['annotations']
  refs: network_ipam_refs->network-ipam[VnSubnetsType], tag_refs->tag, gadget_refs->gadget derived
  children: routing_instances(routing-instance,derived), floating_ip_pools(floating-ip-pool)
  back_refs: instance_ip_back_refs, tag_back_refs
"""  # noqa: E501


def test_parse_resources(gen: ModuleType) -> None:
    types = gen.parse_resources(SYNTHETIC_TYPES)
    assert list(types) == ["config-root", "widget"]
    root = types["config-root"]
    assert root["props"] == {}
    assert root["back_refs"] == []
    assert root["children"] == {"widgets": {"type": "widget", "derived": False},
                                "tags": {"type": "tag", "derived": False}}
    w = types["widget"]
    assert w["parents"] == ["config-root", "project"]
    assert w["props"] == {
        "size": {"type": "integer", "range": [1, 9], "default": 3},
        "color": {"type": "string", "enum": ["red", "blue"], "required": True},
        "labels": {"type": "Labels"},
    }
    assert w["list_props"] == ["labels"]
    assert w["map_props"] == ["annotations"]
    assert w["refs"] == {
        "network_ipam_refs": {"to": "network-ipam", "attr": "VnSubnetsType", "derived": False},
        "tag_refs": {"to": "tag", "attr": None, "derived": False},
        "gadget_refs": {"to": "gadget", "attr": None, "derived": True},
    }
    assert w["children"] == {
        "routing_instances": {"type": "routing-instance", "derived": True},
        "floating_ip_pools": {"type": "floating-ip-pool", "derived": False},
    }
    assert w["back_refs"] == ["instance_ip_back_refs", "tag_back_refs"]


def test_parse_resources_rejects_bad_ref_and_child(gen: ModuleType) -> None:
    bad_ref = "== x  (class X)\n  refs: not a ref\n"
    with pytest.raises(ValueError, match="cannot parse ref"):
        gen.parse_resources(bad_ref)
    bad_child = "== x  (class X)\n  children: kids[kid]\n"
    with pytest.raises(ValueError, match="cannot parse child"):
        gen.parse_resources(bad_child)


def test_parse_complex(gen: ModuleType) -> None:
    text = (
        "# header\n"
        "\n"
        "SubnetType: ip_prefix:string, ip_prefix_len:integer\n"
        "PermType: owner:string, owner_access:integer [0, 7]\n"
        "RuleType: direction:string ['>', '<>'], ports:PortType[], tags:string[]\n"
    )
    types = gen.parse_complex(text)
    assert types == {
        "SubnetType": {"ip_prefix": {"type": "string"}, "ip_prefix_len": {"type": "integer"}},
        "PermType": {"owner": {"type": "string"},
                     "owner_access": {"type": "integer", "range": [0, 7]}},
        "RuleType": {"direction": {"type": "string", "enum": [">", "<>"]},
                     "ports": {"type": "PortType", "list": True},
                     "tags": {"type": "string", "list": True}},
    }
    with pytest.raises(ValueError, match="cannot parse field"):
        gen.parse_complex("Broken: what is this\n")


@pytest.mark.skipif(not (REFERENCE / "vnc-types.txt").exists(),
                    reason="the shared reference dumps are not available")
def test_reproduces_committed_json(gen: ModuleType) -> None:
    resources = gen.parse_resources((REFERENCE / "vnc-types.txt").read_text())
    complex_types = gen.parse_complex((REFERENCE / "vnc-complex-types.txt").read_text())
    # the exact serialisation main() writes
    for name, data in (("resources.json", resources), ("complex_types.json", complex_types)):
        expected = (DATA / name).read_text()
        assert json.dumps(data, indent=1, sort_keys=True) + "\n" == expected, name


def test_main_writes_next_to_the_package(gen: ModuleType, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # main() derives its output directory from the script's own path: point it at a copy.
    fake_script = tmp_path / "scripts" / "gen-schema.py"
    fake_script.parent.mkdir()
    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "vnc-types.txt").write_text(SYNTHETIC_TYPES)
    (ref / "vnc-complex-types.txt").write_text("SubnetType: ip_prefix:string\n")
    monkeypatch.setattr(gen, "__file__", str(fake_script))
    monkeypatch.setattr("sys.argv", ["gen-schema.py", str(ref)])
    gen.main()
    out = tmp_path / "tungsten" / "model" / "data"
    assert set(json.loads((out / "resources.json").read_text())) == {"config-root", "widget"}
    assert json.loads((out / "complex_types.json").read_text()) == {
        "SubnetType": {"ip_prefix": {"type": "string"}}}
