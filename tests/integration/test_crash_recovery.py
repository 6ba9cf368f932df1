"""kill -9 of the controller in the middle of a burst of writes: the store stays consistent,
the controller restarts on it, and every write a client saw succeed is still there."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
import requests

from tungsten.api.fsck import check_store
from tungsten.store import open_store

WORKERS = 6
PROJECT = ["default-domain", "default-project"]
SUBNET = {"ip_prefix": "198.51.100.0", "ip_prefix_len": 24}


@dataclass
class Ledger:
    """What the clients saw succeed, and what they cannot know (request cut by the kill)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    alive: dict[str, str] = field(default_factory=dict)  # uuid -> type
    deleted: dict[str, str] = field(default_factory=dict)
    sg_refs: dict[str, set[str]] = field(default_factory=dict)  # vmi -> security groups
    uncertain: set[str] = field(default_factory=set)
    chains: list[tuple[str, str, str]] = field(default_factory=list)  # (vn, vmi, iip)
    successes: int = 0
    errors: list[str] = field(default_factory=list)

    def ok(self) -> None:
        with self.lock:
            self.successes += 1

    def created(self, u: str, rtype: str) -> None:
        with self.lock:
            self.alive[u] = rtype
            self.successes += 1

    def gone(self, u: str) -> None:
        with self.lock:
            self.deleted[u] = self.alive.pop(u)
            self.sg_refs.pop(u, None)
            self.successes += 1

    def take_chain(self) -> tuple[str, str, str] | None:
        with self.lock:
            return self.chains.pop() if self.chains else None


class Cut(Exception):
    """The server went away mid-request."""


class Worker:
    def __init__(self, base: str, ledger: Ledger, sgs: list[str], seed: int,
                 killed: threading.Event, ipam: str) -> None:
        self.base = base
        self.ledger = ledger
        self.sgs = sgs
        self.rng = random.Random(seed)
        self.killed = killed
        self.ipam = ipam
        self.session = requests.Session()

    def call(self, method: str, path: str, body: Any, subject: str) -> requests.Response:
        try:
            r = self.session.request(method, self.base + path, json=body, timeout=30)
        except requests.RequestException as e:
            with self.ledger.lock:
                self.ledger.uncertain.add(subject)
            raise Cut from e
        if r.status_code != 200:
            with self.ledger.lock:
                self.ledger.uncertain.add(subject)
                if not self.killed.is_set():
                    self.ledger.errors.append(f"{method} {path}: {r.status_code} {r.text}")
            raise Cut
        return r

    def create(self, rtype: str, body: dict[str, Any]) -> str:
        u = str(uuid.uuid4())
        self.call("POST", f"/{rtype}s", {rtype: {**body, "uuid": u}}, u)
        self.ledger.created(u, rtype)
        return u

    def delete(self, rtype: str, u: str) -> None:
        self.call("DELETE", f"/{rtype}/{u}", None, u)
        self.ledger.gone(u)

    def ref(self, vmi: str, sg: str, op: str) -> None:
        self.call("POST", "/ref-update", {"type": "virtual-machine-interface", "uuid": vmi,
                                          "ref-type": "security-group", "ref-uuid": sg,
                                          "operation": op}, vmi)
        with self.ledger.lock:
            refs = self.ledger.sg_refs.setdefault(vmi, set())
            (refs.add if op == "ADD" else refs.discard)(sg)
            self.ledger.successes += 1

    def chain(self) -> None:
        name = f"c-{uuid.uuid4().hex[:12]}"
        vn = self.create("virtual-network", {
            "fq_name": [*PROJECT, name], "parent_type": "project",
            "network_ipam_refs": [{"uuid": self.ipam,
                                   "attr": {"ipam_subnets": [{"subnet": SUBNET}]}}]})
        vmi = self.create("virtual-machine-interface", {
            "fq_name": [*PROJECT, name], "parent_type": "project",
            "virtual_network_refs": [{"uuid": vn}]})
        iip = self.create("instance-ip", {
            "fq_name": [name], "virtual_network_refs": [{"uuid": vn}],
            "virtual_machine_interface_refs": [{"uuid": vmi}]})
        for sg in self.rng.sample(self.sgs, 2):
            self.ref(vmi, sg, "ADD")
        if self.rng.random() < 0.5:
            self.ref(vmi, self.rng.choice(self.sgs), "DELETE")
        if self.rng.random() < 0.4:
            self.delete_chain((vn, vmi, iip))
        else:
            with self.ledger.lock:
                self.ledger.chains.append((vn, vmi, iip))

    def delete_chain(self, chain: tuple[str, str, str]) -> None:
        vn, vmi, iip = chain
        self.delete("instance-ip", iip)
        self.delete("virtual-machine-interface", vmi)
        self.delete("virtual-network", vn)

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                old = self.ledger.take_chain() if self.rng.random() < 0.3 else None
                if old is not None:
                    self.delete_chain(old)
                else:
                    self.chain()
        except Cut:
            pass
        except Exception as e:  # reported by the test
            self.ledger.errors.append(f"{type(e).__name__}: {e}")
        finally:
            self.session.close()


def burst(base: str, ledger: Ledger, sgs: list[str], ipam: str, seed: int,
          until_successes: int, kill: Any | None) -> None:
    """Run the workers until the ledger has ``until_successes`` more successes, then call
    ``kill`` (the kill -9) while they are still writing, or (``kill`` None) stop them."""
    killed = threading.Event()
    stop = threading.Event()
    workers = [Worker(base, ledger, sgs, seed * 100 + i, killed, ipam) for i in range(WORKERS)]
    threads = [threading.Thread(target=w.run, args=(stop,)) for w in workers]
    target = ledger.successes + until_successes
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 60
        while ledger.successes < target and time.monotonic() < deadline and not ledger.errors:
            time.sleep(0.002)
        assert not ledger.errors, ledger.errors
        assert ledger.successes >= target, "the burst made no progress"
        assert all(t.is_alive() for t in threads), "a worker stopped before the kill"
        if kill is not None:
            killed.set()
            kill()
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert not ledger.errors, ledger.errors


def assert_store_clean(store_url: str) -> None:
    store = open_store(store_url)
    try:
        problems = check_store(store)
    finally:
        store.close()
    assert problems == [], problems


def assert_ledger_holds(base: str, ledger: Ledger) -> None:
    with requests.Session() as s:
        assert s.get(base + "/", timeout=10).status_code == 200
        for u, rtype in ledger.alive.items():
            if u in ledger.uncertain:
                continue
            r = s.get(f"{base}/{rtype}/{u}", timeout=10)
            assert r.status_code == 200, f"{rtype} {u} acknowledged but lost: {r.text}"
            obj = r.json()[rtype]
            if rtype == "virtual-machine-interface":
                refs = {x["uuid"] for x in obj.get("security_group_refs", [])}
                assert refs == ledger.sg_refs.get(u, set()), f"refs of {u} lost"
            if rtype == "instance-ip":
                assert obj["instance_ip_address"].startswith("198.51.100.")
        for u, rtype in ledger.deleted.items():
            if u in ledger.uncertain:
                continue
            r = s.get(f"{base}/{rtype}/{u}", timeout=10)
            assert r.status_code == 404, f"{rtype} {u} deleted but back after the crash"


def test_kill9_during_write_bursts(controller: Any) -> None:
    base = controller.url
    ledger = Ledger()
    ipam = requests.post(base + "/fqname-to-id", json={
        "type": "network-ipam", "fq_name": [*PROJECT, "default-network-ipam"]},
        timeout=10).json()["uuid"]
    sgs = []
    for i in range(4):
        r = requests.post(base + "/security-groups", json={"security-group": {
            "fq_name": [*PROJECT, f"crash-sg-{i}"], "parent_type": "project"}}, timeout=10)
        assert r.status_code == 200, r.text
        sgs.append(r.json()["security-group"]["uuid"])
    # kill at different moments: early in the first burst, later in the next ones
    for round_no, successes in enumerate([10, 60, 150, 35]):
        burst(base, ledger, sgs, ipam, round_no, successes, controller.kill9)
        assert controller.proc.poll() is not None, "the controller survived kill -9"
        assert_store_clean(controller.store_url)
        controller.start()
        assert_ledger_holds(base, ledger)
    assert len(ledger.alive) > 20 and len(ledger.deleted) > 20
    # the kills really cut requests in flight (the outcome of those is the client's guess)
    assert ledger.uncertain
    print(f"alive {len(ledger.alive)}, deleted {len(ledger.deleted)}, "
          f"cut {len(ledger.uncertain)}")
    # a last burst on the recovered store, stopped cleanly this time
    burst(base, ledger, sgs, ipam, 99, 50, None)
    assert_ledger_holds(base, ledger)
    controller.stop()
    assert_store_clean(controller.store_url)


def test_checker_sees_damage(controller: Any, tmp_path: Any) -> None:
    """The oracle of the test above: ``check_store`` (and ``tungsten store check``) pass a
    store the controller wrote and report every kind of damage done to it behind its back."""
    base = controller.url
    ipam = requests.post(base + "/fqname-to-id", json={
        "type": "network-ipam", "fq_name": [*PROJECT, "default-network-ipam"]},
        timeout=10).json()["uuid"]
    w = Worker(base, Ledger(), [], 0, threading.Event(), ipam)
    vn = w.create("virtual-network", {
        "fq_name": [*PROJECT, "dmg"], "parent_type": "project",
        "network_ipam_refs": [{"uuid": ipam, "attr": {"ipam_subnets": [{"subnet": SUBNET}]}}]})
    vmi = w.create("virtual-machine-interface", {
        "fq_name": [*PROJECT, "dmg"], "parent_type": "project",
        "virtual_network_refs": [{"uuid": vn}]})
    iip = w.create("instance-ip", {"fq_name": ["dmg"], "virtual_network_refs": [{"uuid": vn}],
                                   "virtual_machine_interface_refs": [{"uuid": vmi}]})
    sg = w.create("security-group", {"fq_name": [*PROJECT, "dmg"], "parent_type": "project"})
    w.session.close()
    reserved = requests.post(f"{base}/virtual-network/{vn}/ip-alloc", json={"count": 1},
                             timeout=10).json()["ip_addr"][0]
    controller.stop()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tungsten", "store", "check", "--store",
                               controller.store_url, *args], capture_output=True, text=True,
                              timeout=60)

    r = cli()
    assert r.returncode == 0 and r.stdout.startswith("store is consistent ("), r
    r = cli("--json")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["consistent"] is True and out["problems"] == []
    assert out["objects"] > 20 and out["revision"] > 5

    store = open_store(controller.store_url)
    try:
        vn_doc = orjson.loads(store.get(f"obj/{vn}") or b"")
        iip_addr = orjson.loads(store.get(f"obj/{iip}") or b"")["props"]["instance_ip_address"]
        vn_id = vn_doc["props"]["virtual_network_network_id"]
        ghost = str(uuid.uuid4())
        twin = {**vn_doc, "uuid": str(uuid.uuid4())}
        orphan = {**orjson.loads(store.get(f"obj/{sg}") or b""), "uuid": str(uuid.uuid4()),
                  "fq_name": [*PROJECT, "orphan"], "parent_uuid": ghost}
        with store.transaction() as t:
            t.delete(f"obj/{vmi}")  # iip's ref dangles, the vmi's fq_name claim is orphaned
            t.delete(f"claim/ip/{vn}/{iip_addr}")  # the iip's address has no claim
            t.put(f"claim/ip/{vn}/198.51.100.7", ghost.encode())
            t.put(f"claim/ip/{ghost}/198.51.100.8", b"reserved")
            t.delete(f"claim/id/vn/{vn_id}")
            t.put("claim/id/sg/9999999", ghost.encode())
            t.put(f"obj/{twin['uuid']}", orjson.dumps(twin))  # a duplicate fq_name
            t.put(f"obj/{orphan['uuid']}", orjson.dumps(orphan))  # parent does not exist
        problems = check_store(store)
    finally:
        store.close()
    text = "\n".join(problems)
    expected = [
        f"dangling ref virtual_machine_interface_refs to {vmi}",
        f"is held by {vmi}, which does not exist",
        f"has address {iip_addr} but no ip claim",
        f"address 198.51.100.7 of scope {vn} is claimed by {ghost}",
        f"address 198.51.100.8 is reserved (ip-alloc) in network {ghost}",
        f"has vn id {vn_id} but no claim",
        f"sg id 9999999 is claimed by {ghost}",
        "duplicate fq_name: 2 virtual-network objects are named default-domain:"
        "default-project:dmg",
        f"has a parent project {ghost} that does not exist",
    ]
    for e in expected:
        assert e in text, f"{e!r} not reported in:\n{text}"
    assert reserved not in text  # a reservation in a live network is fine
    r = cli()
    assert r.returncode == 1 and "problem" in r.stdout and f"{vmi}" in r.stdout
    r = cli("--json")
    out = json.loads(r.stdout)
    assert r.returncode == 1 and out["consistent"] is False
    assert len(out["problems"]) == len(problems)
    r = subprocess.run([sys.executable, "-m", "tungsten", "store", "check", "--store",
                        "nosuch://x"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unsupported store URL" in r.stderr
    assert "Traceback" not in r.stderr
