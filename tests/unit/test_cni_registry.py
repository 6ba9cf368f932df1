"""CNI attachments persist in the agent's port registry (what DEL/GC/CHECK need after an
agent restart), and the plugin's pure result helpers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tungsten.agent.ports import Attachment, PortRecord, PortRegistry, attachment_key
from tungsten.cni import spec


def test_attachments_round_trip(tmp_path: Path) -> None:
    reg = PortRegistry.load(tmp_path)
    att = Attachment("c1", "eth0", "/run/netns/c1", "default-domain:p:red", "tnet",
                     port="u1", host_ifname="tapu1", labels={"app": "web"},
                     result={"ips": [{"address": "198.51.100.3/32"}]}, state="ready")
    reg.attachments[att.key] = att
    reg.ports["u1"] = PortRecord("u1", "cni-n1-c1-eth0", created=True)
    reg.save()
    again = PortRegistry.load(tmp_path)
    assert again.attachments == {"c1/eth0": att}
    assert again.ports["u1"].created


def test_registry_without_attachments_still_loads(tmp_path: Path) -> None:
    """A ports.json written before CNI attachments existed."""
    (tmp_path / "ports.json").write_text(json.dumps(
        {"ports": [{"uuid": "u1", "name": "x", "created": True}], "pending_deletes": ["u2"]}))
    reg = PortRegistry.load(tmp_path)
    assert reg.attachments == {} and reg.pending_deletes == ["u2"]


def test_unknown_attachment_fields_are_ignored_missing_ones_refused(tmp_path: Path) -> None:
    base = {"container_id": "c1", "ifname": "eth0", "netns": "/n", "network": "a:b:c",
            "config_name": "tnet", "future_field": 1}
    (tmp_path / "ports.json").write_text(json.dumps({"attachments": [base]}))
    assert PortRegistry.load(tmp_path).attachments[attachment_key("c1", "eth0")].state == \
        "adding"
    del base["netns"]
    (tmp_path / "ports.json").write_text(json.dumps({"attachments": [base]}))
    with pytest.raises(ValueError, match="bad attachment"):
        PortRegistry.load(tmp_path)


def test_format_result_per_version() -> None:
    agent = {"interfaces": [{"name": "tap1"}, {"name": "eth0", "mac": "02:00:00:00:00:01",
                                               "mtu": 1450, "sandbox": "/n"}],
             "ips": [{"address": "2001:db8::5/128", "interface": 1}],
             "routes": [{"dst": "::/0", "gw": "2001:db8::1", "mtu": 1400}],
             "dns": {}, "port": "u1"}
    old = spec.format_result(agent, "0.4.0")
    assert old["ips"][0]["version"] == "6" and "mtu" not in old["interfaces"][1]
    assert old["routes"] == [{"dst": "::/0", "gw": "2001:db8::1"}]
    new = spec.format_result(agent, "1.1.0")
    assert new["interfaces"][1]["mtu"] == 1450 and new["routes"][0]["mtu"] == 1400
    assert "version" not in new["ips"][0] and "port" not in new
