"""Address allocation under concurrent clients: every free address is handed out exactly once,
reserved addresses never, and the store stays consistent."""

from __future__ import annotations

import ipaddress
import threading
import uuid
from collections.abc import Callable
from typing import Any

import requests

from tungsten.api.fsck import check_store
from tungsten.store import open_store

SUBNET = "203.0.113.0/26"
NETWORK, BROADCAST = "203.0.113.0", "203.0.113.63"
GATEWAY, DNS = "203.0.113.62", "203.0.113.61"  # TF defaults: last usable, last usable - 1
USABLE = [str(a) for a in ipaddress.ip_network(SUBNET).hosts() if str(a) not in (GATEWAY, DNS)]
FREE_LEFT = 20
CLIENTS = 16
HEADERS = {"Content-Type": "application/json"}


def make_vn(base: str, name: str) -> str:
    ipam = requests.post(f"{base}/fqname-to-id", json={
        "type": "network-ipam",
        "fq_name": ["default-domain", "default-project", "default-network-ipam"],
    }, timeout=10).json()["uuid"]
    prefix, plen = SUBNET.split("/")
    body = {"virtual-network": {
        "fq_name": ["default-domain", "default-project", name],
        "parent_type": "project",
        "network_ipam_refs": [{"uuid": ipam, "attr": {"ipam_subnets": [
            {"subnet": {"ip_prefix": prefix, "ip_prefix_len": int(plen)}}]}}],
    }}
    r = requests.post(f"{base}/virtual-networks", json=body, timeout=10)
    assert r.status_code == 200, r.text
    return str(r.json()["virtual-network"]["uuid"])


def create_iip(session: requests.Session, base: str, vn: str,
               address: str | None = None) -> requests.Response:
    body: dict[str, Any] = {"fq_name": [f"iip-{uuid.uuid4()}"],
                            "virtual_network_refs": [{"uuid": vn}]}
    if address:
        body["instance_ip_address"] = address
    return session.post(f"{base}/instance-ips", json={"instance-ip": body}, timeout=30)


def prefill(base: str, vn: str) -> set[str]:
    """Take all but FREE_LEFT usable addresses, scattered over the subnet, so the allocator
    has to skip holes rather than just count down."""
    taken = set(USABLE[::3])  # every third address...
    for a in USABLE:  # ...then more, from the bottom, until FREE_LEFT remain
        if len(taken) >= len(USABLE) - FREE_LEFT:
            break
        taken.add(a)
    with requests.Session() as s:
        for a in sorted(taken):
            r = create_iip(s, base, vn, a)
            assert r.status_code == 200, r.text
    return taken


def race(worker: Callable[[requests.Session], list[str]]) -> list[str]:
    """Run CLIENTS workers at once (each with its own session); all addresses they got."""
    results: list[list[str]] = [[] for _ in range(CLIENTS)]
    errors: list[BaseException] = []
    start = threading.Barrier(CLIENTS)

    def run(i: int) -> None:
        try:
            with requests.Session() as s:
                start.wait(10)
                results[i] = worker(s)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert not errors, errors
    return [a for r in results for a in r]


def assert_fair(handed: list[str], taken: set[str]) -> None:
    assert len(handed) == len(set(handed)), "an address was handed out twice"
    assert len(handed) == FREE_LEFT
    assert set(handed) == set(USABLE) - taken
    assert not set(handed) & {NETWORK, BROADCAST, GATEWAY, DNS}
    net = ipaddress.ip_network(SUBNET)
    assert all(ipaddress.ip_address(a) in net for a in handed)


def assert_store_clean(controller: Any) -> None:
    controller.stop()
    store = open_store(controller.store_url)
    try:
        problems = check_store(store)
    finally:
        store.close()
    assert problems == []


def test_instance_ip_race(controller: Any) -> None:
    base = controller.url
    vn = make_vn(base, "race-vn")
    taken = prefill(base, vn)

    def worker(s: requests.Session) -> list[str]:
        got = []
        while True:
            r = create_iip(s, base, vn)
            if r.status_code == 400:
                assert "exhausted" in r.text, r.text
                return got
            assert r.status_code == 200, r.text
            iip = r.json()["instance-ip"]["uuid"]
            read = s.get(f"{base}/instance-ip/{iip}", timeout=30)
            assert read.status_code == 200, read.text
            got.append(read.json()["instance-ip"]["instance_ip_address"])

    handed = race(worker)
    assert_fair(handed, taken)
    # the network really is full now, for everyone
    with requests.Session() as s:
        assert create_iip(s, base, vn).status_code == 400
    assert_store_clean(controller)


def test_ip_alloc_race(controller: Any) -> None:
    base = controller.url
    vn = make_vn(base, "race-vn-alloc")
    taken = prefill(base, vn)

    def worker(s: requests.Session) -> list[str]:
        got: list[str] = []
        while True:
            r = s.post(f"{base}/virtual-network/{vn}/ip-alloc", json={"count": 1},
                       headers=HEADERS, timeout=30)
            if r.status_code == 409:
                return got
            assert r.status_code == 200, r.text
            got.extend(r.json()["ip_addr"])

    handed = race(worker)
    assert_fair(handed, taken)
    # reservations count as used, and freeing one makes exactly it available again
    r = requests.post(f"{base}/virtual-network/{vn}/subnet-ip-count",
                      json={"subnet_list": [SUBNET]}, timeout=10)
    assert r.json() == {"ip_count_list": [len(USABLE)]}
    freed = handed[0]
    r = requests.post(f"{base}/virtual-network/{vn}/ip-free", json={"ip_addr": [freed]},
                      timeout=10)
    assert r.status_code == 200, r.text
    r = requests.post(f"{base}/virtual-network/{vn}/ip-alloc", json={}, timeout=10)
    assert r.status_code == 200 and r.json()["ip_addr"] == [freed], r.text
    assert_store_clean(controller)
