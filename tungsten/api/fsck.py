"""A consistency check of a config store, read raw (no server needed).

It re-derives, from the stored documents alone, everything the API server keeps consistent
inside its transactions: every ref and parent points at an existing object, every object holds
exactly its own fq_name claim, every allocated address and id is claimed by its live owner (and
every claim has one), and the in-memory index the server would build from the store agrees
with the documents.  A store that fails any of this was written by a buggy server or damaged
outside it; ``check_store`` returns one sentence per problem (empty when consistent).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from tungsten.api.addressing import NO_ALLOC_VNS, RESERVED_OWNER
from tungsten.api.objdb import CLAIM, KV, META, OBJ, Obj, ObjectDB, fqn_claim
from tungsten.model.schema import Schema, load_schema
from tungsten.store import ConfigStore

FQN = CLAIM + "fqn/"
IP = CLAIM + "ip/"
ID = CLAIM + "id/"
IP_OWNER_TYPES = {
    "instance-ip": "instance_ip_address",
    "floating-ip": "floating_ip_address",
    "alias-ip": "alias_ip_address",
}
# A live server may commit between our reads; a changed revision means "read again".
SNAPSHOT_TRIES = 5


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    objects: int = 0
    revision: int = 0

    @property
    def consistent(self) -> bool:
        return not self.problems


@dataclass
class _Snapshot:
    revision: int
    objs: list[tuple[str, bytes]]
    claims: list[tuple[str, bytes]]
    kv: list[tuple[str, bytes]]
    meta: list[tuple[str, bytes]]


def check_store(store: ConfigStore) -> list[str]:
    """Every inconsistency found in ``store``, one sentence each; empty when consistent."""
    return check(store).problems


def check(store: ConfigStore, schema: Schema | None = None) -> Report:
    snap = _read(store)
    checker = _Checker(schema or load_schema(), snap)
    checker.run()
    checker.compare_index(store)
    return Report(checker.problems, len(checker.objs), snap.revision)


def _read(store: ConfigStore) -> _Snapshot:
    for _ in range(SNAPSHOT_TRIES):
        before = store.revision
        snap = _Snapshot(before, list(store.list(OBJ)), list(store.list(CLAIM)),
                         list(store.list(KV)), list(store.list(META)))
        if store.revision == before:
            return snap
    return snap  # still changing: check the last read anyway, it may report transients


class _Checker:
    def __init__(self, schema: Schema, snap: _Snapshot) -> None:
        self.schema = schema
        self.snap = snap
        self.problems: list[str] = []
        self.objs: dict[str, Obj] = {}
        self.claims: dict[str, str] = {}

    def report(self, text: str) -> None:
        self.problems.append(text)

    # -- parsing ---------------------------------------------------------------------------------
    def parse(self) -> None:
        for key, raw in self.snap.objs:
            try:
                o = Obj.from_json(raw)
            except (orjson.JSONDecodeError, KeyError, TypeError) as e:
                self.report(f"{key} is not a valid object document ({type(e).__name__}: {e})")
                continue
            if key != OBJ + o.uuid:
                self.report(f"{key} holds the document of another uuid ({o.uuid})")
                continue
            self.objs[o.uuid] = o
        for key, raw in self.snap.claims:
            try:
                self.claims[key] = raw.decode()
            except UnicodeDecodeError:
                self.report(f"claim {key} has an owner that is not text")
        for key, raw in [*self.snap.kv, *self.snap.meta]:
            try:
                orjson.loads(raw)
            except orjson.JSONDecodeError:
                self.report(f"{key} does not hold JSON")

    def run(self) -> None:
        self.parse()
        self.check_objects()
        self.check_fqn_claims()
        self.check_ip_claims()
        self.check_id_claims()
        known = (FQN, IP, ID)
        for key in self.claims:
            if not key.startswith(known):
                self.report(f"claim {key} is of no known kind (fqn, ip or id)")

    def describe(self, o: Obj) -> str:
        return f"{o.type} {o.uuid} ({':'.join(o.fq_name)})"

    # -- objects: type, parent, refs ---------------------------------------------------------
    def check_objects(self) -> None:
        for o in self.objs.values():
            rt = self.schema.resource(o.type)
            if rt is None:
                self.report(f"{self.describe(o)} is of an unknown resource type")
            if o.parent_uuid:
                parent = self.objs.get(o.parent_uuid)
                if parent is None:
                    self.report(f"{self.describe(o)} has a parent {o.parent_type} "
                                f"{o.parent_uuid} that does not exist")
                elif parent.type != o.parent_type:
                    self.report(f"{self.describe(o)} says its parent is a {o.parent_type} but "
                                f"{o.parent_uuid} is a {parent.type}")
                elif parent.fq_name != o.fq_name[:-1]:
                    self.report(f"{self.describe(o)} has an fq_name that does not extend its "
                                f"parent's ({':'.join(parent.fq_name)})")
            elif o.parent_type:
                self.report(f"{self.describe(o)} has parent type {o.parent_type} but no parent")
            elif len(o.fq_name) != 1:
                self.report(f"{self.describe(o)} has no parent but a multi-part fq_name")
            for f, target_uuid in o.ref_uuids():
                target = self.objs.get(target_uuid)
                if target is None:
                    self.report(f"{self.describe(o)} has a dangling ref {f} to {target_uuid}, "
                                "which does not exist")
                    continue
                spec = rt.refs.get(f) if rt is not None else None
                if spec is not None and spec.to != target.type:
                    self.report(f"{self.describe(o)} has a ref {f} to {self.describe(target)}, "
                                f"but {f} must point at a {spec.to}")

    # -- fq_name claims ----------------------------------------------------------------------
    def check_fqn_claims(self) -> None:
        by_name: dict[str, list[Obj]] = {}
        for o in self.objs.values():
            by_name.setdefault(fqn_claim(o.type, o.fq_name), []).append(o)
        for key, objs in by_name.items():
            if len(objs) > 1:
                uuids = ", ".join(sorted(o.uuid for o in objs))
                self.report(f"duplicate fq_name: {len(objs)} {objs[0].type} objects are named "
                            f"{':'.join(objs[0].fq_name)} ({uuids})")
            for o in objs:
                owner = self.claims.get(key)
                if owner is None:
                    self.report(f"{self.describe(o)} has no fq_name claim ({key})")
                elif owner != o.uuid and len(objs) == 1:
                    self.report(f"the fq_name claim of {self.describe(o)} belongs to {owner}")
        for key, owner in self.claims.items():
            if not key.startswith(FQN):
                continue
            holder = self.objs.get(owner)
            if holder is None:
                self.report(f"fq_name claim {key} is held by {owner}, which does not exist")
            elif fqn_claim(holder.type, holder.fq_name) != key:
                self.report(f"fq_name claim {key} is held by {self.describe(holder)}, which "
                            "has another name")

    # -- address claims ----------------------------------------------------------------------
    def check_ip_claims(self) -> None:
        owned: dict[str, list[str]] = {}  # owner uuid -> addresses it holds
        for key, owner in self.claims.items():
            if not key.startswith(IP):
                continue
            scope, sep, addr = key[len(IP):].partition("/")
            if not sep or not _is_address(addr):
                self.report(f"ip claim {key} is malformed (claim/ip/<scope uuid>/<address>)")
                continue
            # An owned claim may outlive its scope (a network or flat ipam deleted through a
            # relaxed ref): the owner still releases it when deleted.  A reservation may not.
            scope_obj = self.objs.get(scope)
            if owner == RESERVED_OWNER:
                if scope_obj is None or scope_obj.type != "virtual-network":
                    self.report(f"address {addr} is reserved (ip-alloc) in network {scope}, "
                                "which does not exist")
                continue
            holder = self.objs.get(owner)
            if holder is None:
                self.report(f"address {addr} of scope {scope} is claimed by {owner}, "
                            "which does not exist")
                continue
            prop = IP_OWNER_TYPES.get(holder.type)
            if prop is None:
                self.report(f"address {addr} of scope {scope} is claimed by "
                            f"{self.describe(holder)}, which cannot own an address")
                continue
            if _canonical(holder.props.get(prop)) != addr:
                self.report(f"address {addr} of scope {scope} is claimed by "
                            f"{self.describe(holder)}, whose address is "
                            f"{holder.props.get(prop)}")
            owned.setdefault(owner, []).append(addr)
        for o in self.objs.values():
            prop = IP_OWNER_TYPES.get(o.type)
            address = _canonical(o.props.get(prop)) if prop else None
            if not address or self._unallocated_iip(o):
                continue
            held = owned.get(o.uuid, [])
            if address not in held:
                self.report(f"{self.describe(o)} has address {address} but no ip claim owned "
                            "by it")

    def _unallocated_iip(self, o: Obj) -> bool:
        """An instance-ip whose address is not allocated here: in ip-fabric or link-local, or
        left without a network (its relaxed ref went with the deleted network, and so did the
        network's claims)."""
        if o.type != "instance-ip":
            return False
        for ref in o.refs.get("virtual_network_refs", [])[:1]:
            vn = self.objs.get(ref["uuid"])
            return vn is not None and vn.fq_name[-1] in NO_ALLOC_VNS
        return not o.refs.get("network_ipam_refs")

    # -- id claims ---------------------------------------------------------------------------
    def _holds_route_target(self, holder: Obj, space: str, n: str) -> bool:
        """Route-target numbers are the transformer's: the routing instance or logical
        router they were allocated for refers to the route target ``target:ASN:<n>``."""
        if space != "route-target":
            return False
        for ref in holder.refs.get("route_target_refs", []):
            target = self.objs.get(ref["uuid"])
            if target is not None and target.fq_name[-1].rpartition(":")[2] == n:
                return True
        return False

    def check_id_claims(self) -> None:
        for key, owner in self.claims.items():
            if not key.startswith(ID):
                continue
            space, sep, text = key[len(ID):].rpartition("/")
            if not sep or not text.isdigit():
                self.report(f"id claim {key} is malformed (claim/id/<space>/<n>)")
                continue
            holder = self.objs.get(owner)
            if holder is None:
                self.report(f"{space} id {text} is claimed by {owner}, which does not exist")
                continue
            if (space, int(text)) not in {(sp, n) for sp, n, _ in _id_claims(holder)} and \
                    not self._holds_route_target(holder, space, text):
                self.report(f"{space} id {text} is claimed by {self.describe(holder)}, which "
                            "does not hold that id")
        for o in self.objs.values():
            for space, n, required in _id_claims(o):
                key = f"{ID}{space}/{n}"
                id_owner = self.claims.get(key)
                if id_owner is None and not required:
                    continue
                if id_owner is None:
                    self.report(f"{self.describe(o)} has {space} id {n} but no claim ({key})")
                elif id_owner != o.uuid:
                    self.report(f"{self.describe(o)} has {space} id {n}, but its claim belongs "
                                f"to {id_owner}")

    # -- the server's in-memory index --------------------------------------------------------
    def compare_index(self, store: ConfigStore) -> None:
        """Build the index the server would build from this store and compare it with the
        documents, so a loader bug (or a half-loadable document) shows up here too."""
        if len(self.objs) != len(self.snap.objs):
            return  # unparsable documents are reported already; the loader would fail
        try:
            db = ObjectDB(store)
        except Exception as e:  # the server could not start on this store
            self.report(f"the server's index cannot be built from this store: "
                        f"{type(e).__name__}: {e}")
            return
        if db.store.revision != self.snap.revision:
            return  # the store moved on since our snapshot: the comparison would be noise
        if set(db.objs) != set(self.objs):
            self.report("the server's index holds other objects than the store")
        for (rtype, fq), u in db.fqn.items():
            o = self.objs.get(u)
            if o is None or o.type != rtype or tuple(o.fq_name) != fq:
                self.report(f"the server's index maps {rtype} {':'.join(fq)} to {u}, "
                            "which is not that object")
        back: dict[str, set[str]] = {}
        children: dict[str, set[str]] = {}
        for o in self.objs.values():
            for _, target in o.ref_uuids():
                back.setdefault(target, set()).add(o.uuid)
            if o.parent_uuid:
                children.setdefault(o.parent_uuid, set()).add(o.uuid)
        _compare_maps(self, "back refs", back, db.back)
        _compare_maps(self, "children", children, db.children)
        if db.claims != self.claims:
            self.report("the server's index holds other claims than the store")


def _compare_maps(checker: _Checker, what: str, want: dict[str, set[str]],
                  got: dict[str, dict[str, None]]) -> None:
    for u in sorted(set(want) | {k for k, v in got.items() if v}):
        if want.get(u, set()) != set(got.get(u, {})):
            checker.report(f"the server's index has other {what} of {u} than the documents")


def _id_claims(o: Obj) -> Iterable[tuple[str, int, bool]]:
    """The (space, id, claim required) of every id an object holds: a claim of that id must
    be the object's; one the server allocated must exist."""
    p = o.props
    if o.type == "virtual-network":
        n = _int(p.get("virtual_network_network_id"))
        if n is not None:
            yield "vn", n, True
        vx = _int((p.get("virtual_network_properties") or {}).get("vxlan_network_identifier"))
        if vx is not None:
            yield "vxlan", vx, True
    elif o.type == "security-group":
        # an id equal to the configured one is the operator's choice: it may go unclaimed
        n = _int(p.get("security_group_id"))
        if n is not None:
            yield "sg", n, n != p.get("configured_security_group_id")
    elif o.type == "tag":
        tid = _hex(p.get("tag_id"))
        if tid is not None:
            yield f"tag/{tid >> 16}", tid & 0xFFFF, True
    elif o.type == "tag-type":
        ttid = _hex(p.get("tag_type_id"))
        if ttid is not None:
            yield "tag-type", ttid, True


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _hex(v: Any) -> int | None:
    try:
        return int(str(v), 16) if v is not None else None
    except ValueError:
        return None


def _is_address(text: str) -> bool:
    return _canonical(text) == text


def _canonical(v: Any) -> str | None:
    if not isinstance(v, str) or not v:
        return None
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        return None
