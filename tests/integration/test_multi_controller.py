"""Two controllers on one store: each serves the other's writes, and allocation stays unique
when both allocate from the same subnet at once."""

from __future__ import annotations

import threading
from typing import Any

import requests

from tungsten.api.fsck import check_store
from tungsten.store import open_store

PROJECT = ["default-domain", "default-project"]


def _post(url: str, rtype: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{url}/{rtype}s", json={rtype: body}, timeout=30)


def test_two_controllers_share_one_store(controller_factory: Any, tmp_path: Any) -> None:
    store = f"sqlite:///{tmp_path / 'shared.db'}"
    a = controller_factory(store=store)
    b = controller_factory(store=store)
    vn = _post(a.url, "virtual-network", {
        "fq_name": [*PROJECT, "shared-vn"], "parent_type": "project",
        "network_ipam_refs": [{"to": [*PROJECT, "default-network-ipam"], "attr": {
            "ipam_subnets": [{"subnet": {"ip_prefix": "203.0.113.0", "ip_prefix_len": 26}}]}}],
    })
    assert vn.status_code == 200, vn.text
    vn_uuid = vn.json()["virtual-network"]["uuid"]
    # b serves what a wrote, at once
    got = requests.get(f"{b.url}/virtual-network/{vn_uuid}", timeout=10)
    assert got.status_code == 200, got.text
    assert got.json()["virtual-network"]["virtual_network_network_id"] >= 1

    handed: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()

    def grab(url: str, worker: int) -> None:
        session = requests.Session()
        for i in range(40):
            r = session.post(f"{url}/instance-ips", json={"instance-ip": {
                "fq_name": [f"race-{worker}-{i}"],
                "virtual_network_refs": [{"uuid": vn_uuid}]}}, timeout=30)
            if r.status_code == 400 and "exhausted" in r.text:
                return
            with lock:
                if r.status_code == 200:
                    uuid = r.json()["instance-ip"]["uuid"]
                    ip = session.get(f"{url}/instance-ip/{uuid}", timeout=10).json()
                    handed.append(ip["instance-ip"]["instance_ip_address"])
                else:
                    errors.append(f"{r.status_code} {r.text}")

    threads = [threading.Thread(target=grab, args=(c.url, n))
               for n, c in enumerate([a, b, a, b, a, b])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    # a /26 has 64 addresses; network, broadcast, gateway and DNS are never handed out
    assert len(handed) == 60
    assert len(set(handed)) == len(handed), "an address was handed out twice"
    # both controllers list every instance-ip the other created
    for c in (a, b):
        listed = requests.get(f"{c.url}/instance-ips?back_ref_id={vn_uuid}", timeout=10).json()
        assert len(listed["instance-ips"]) == 60
    a.stop()
    b.stop()
    assert check_store(open_store(store)) == []
