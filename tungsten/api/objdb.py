"""The object database: an in-memory index of every config object, persisted in a ConfigStore.

The store is the source of truth; this process keeps a complete, indexed copy (objects by uuid,
by type and by fq_name, children of each parent, back refs of each target, and *claims*:
uniqueness keys such as fq_names, allocated addresses and ids).  A request stages its changes in
a ``WriteSet`` that reads through to the index; ``commit()`` writes everything in one store
transaction and only then updates the index, so a failed request leaves nothing behind.

Store layout:
    obj/<uuid>                     the object document (JSON)
    claim/fqn/<type>/<fq_name>     -> uuid          (unique fq_name per type)
    claim/ip/<vn uuid>/<address>   -> owner uuid    (allocated addresses)
    claim/id/<space>/<n>           -> owner uuid    (vn ids, sg ids, tag ids, vxlan ids)
    kv/<key>                       user-agent key/values
    meta/<name>                    server settings (e.g. aaa-mode)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from tungsten.store import Compacted, ConfigStore

OBJ = "obj/"
CLAIM = "claim/"
KV = "kv/"
META = "meta/"


@dataclass
class Obj:
    type: str
    uuid: str
    fq_name: list[str]
    parent_type: str | None
    parent_uuid: str | None
    props: dict[str, Any] = field(default_factory=dict)
    # list/map properties: field -> [[position, element], ...] sorted by position
    colls: dict[str, list[list[Any]]] = field(default_factory=dict)
    # ref field -> [{"uuid": target uuid, "attr": link attribute or None}]
    refs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    relaxed: list[str] = field(default_factory=list)  # targets whose refs don't block delete
    seq: int = 0  # creation order
    derived: bool = False  # created by the system (not blocking parent delete)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "type": self.type,
                "uuid": self.uuid,
                "fq_name": self.fq_name,
                "parent_type": self.parent_type,
                "parent_uuid": self.parent_uuid,
                "props": self.props,
                "colls": self.colls,
                "refs": self.refs,
                "relaxed": self.relaxed,
                "seq": self.seq,
                "derived": self.derived,
            }
        )

    @staticmethod
    def from_json(raw: bytes) -> Obj:
        d = orjson.loads(raw)
        return Obj(
            type=d["type"],
            uuid=d["uuid"],
            fq_name=d["fq_name"],
            parent_type=d["parent_type"],
            parent_uuid=d["parent_uuid"],
            props=d["props"],
            colls=d.get("colls", {}),
            refs=d["refs"],
            relaxed=d.get("relaxed", []),
            seq=d.get("seq", 0),
            derived=d.get("derived", False),
        )

    def copy(self) -> Obj:
        return Obj.from_json(self.to_json())

    def ref_uuids(self) -> Iterator[tuple[str, str]]:
        """(field, target uuid) for every ref."""
        for f, refs in self.refs.items():
            for r in refs:
                yield f, r["uuid"]


def fqn_claim(rtype: str, fq_name: Iterable[str]) -> str:
    return f"{CLAIM}fqn/{rtype}/" + orjson.dumps(list(fq_name)).decode()


class ObjectDB:
    def __init__(self, store: ConfigStore) -> None:
        self.store = store
        self.objs: dict[str, Obj] = {}
        self.by_type: dict[str, dict[str, Obj]] = {}
        self.fqn: dict[tuple[str, tuple[str, ...]], str] = {}
        self.children: dict[str, dict[str, None]] = {}
        # target uuid -> {referrer uuid: None}
        self.back: dict[str, dict[str, None]] = {}
        self.claims: dict[str, str] = {}
        self.kv: dict[str, str] = {}
        self.meta: dict[str, Any] = {}
        self.id_hints: dict[str, int] = {}  # id space -> lowest id that may be free
        self.revision = 0  # the store revision this index reflects
        # called as fn(old, new) for every object change (None: absent), ours or another
        # writer's, after the index has it
        self.listeners: list[Callable[[Obj | None, Obj | None], None]] = []
        self._seq = itertools.count(1)
        self.load()

    # -- loading -----------------------------------------------------------------------------
    def load(self) -> None:
        # The revision is read first: changes committed while we read are applied again by
        # catch_up(), which is harmless because applying a change is idempotent.
        self.revision = self.store.revision
        objs = [Obj.from_json(v) for _, v in self.store.list(OBJ)]
        objs.sort(key=lambda o: o.seq)
        for o in objs:
            self._index(o)
        for k, v in self.store.list(CLAIM):
            self.claims[k] = v.decode()
        for k, v in self.store.list(KV):
            self.kv[k[len(KV) :]] = orjson.loads(v)
        for k, v in self.store.list(META):
            self.meta[k[len(META) :]] = orjson.loads(v)
        top = max((o.seq for o in objs), default=0)
        self._seq = itertools.count(top + 1)

    def next_seq(self) -> int:
        return next(self._seq)

    def reset(self) -> None:
        for attr in ("objs", "by_type", "fqn", "children", "back", "claims", "kv", "meta"):
            getattr(self, attr).clear()
        self.load()

    # -- following other writers -----------------------------------------------------------------
    def catch_up(self) -> int:
        """Apply what other writers (another controller, a transformer process) committed since
        this index was last current; returns the number of changes applied."""
        if self.store.revision == self.revision:
            return 0
        applied = 0
        while True:
            try:
                batch = self.store.changes_since(self.revision)
            except Compacted:
                self.reset()
                return -1
            if not batch:
                return applied
            for change in batch:
                self.apply(change.key, change.value)
                self.revision = change.revision
            applied += len(batch)

    def set_obj(self, uuid: str, new: Obj | None) -> None:
        """Index ``new`` as the object ``uuid`` (None: it is gone) and tell the listeners."""
        old = self.objs.get(uuid)
        if old is not None and new is not None:
            self._reindex(old, new)
        elif old is not None:
            self._unindex(old)
        elif new is not None:
            self._index(new)
        for fn in self.listeners:
            fn(old, new)

    def apply(self, key: str, value: bytes | None) -> None:
        """Make the index hold ``key`` = ``value`` (None: deleted)."""
        if key.startswith(OBJ):
            self.set_obj(key[len(OBJ) :], Obj.from_json(value) if value is not None else None)
        elif key.startswith(CLAIM):
            if value is None:
                self.claims.pop(key, None)
            else:
                self.claims[key] = value.decode()
        elif key.startswith(KV) or key.startswith(META):
            target, name = (self.kv, key[len(KV) :]) if key.startswith(KV) else (
                self.meta, key[len(META) :])
            if value is None:
                target.pop(name, None)
            else:
                target[name] = orjson.loads(value)

    # -- index maintenance ---------------------------------------------------------------------
    def _index(self, o: Obj) -> None:
        self.objs[o.uuid] = o
        self.by_type.setdefault(o.type, {})[o.uuid] = o
        self.fqn[(o.type, tuple(o.fq_name))] = o.uuid
        if o.parent_uuid:
            self.children.setdefault(o.parent_uuid, {})[o.uuid] = None
        for _, target in o.ref_uuids():
            self.back.setdefault(target, {})[o.uuid] = None

    def _unindex(self, o: Obj) -> None:
        self.objs.pop(o.uuid, None)
        self.by_type.get(o.type, {}).pop(o.uuid, None)
        self.fqn.pop((o.type, tuple(o.fq_name)), None)
        if o.parent_uuid:
            self.children.get(o.parent_uuid, {}).pop(o.uuid, None)
        for _, target in o.ref_uuids():
            referrers = self.back.get(target)
            if referrers is not None:
                referrers.pop(o.uuid, None)
                if not referrers:
                    del self.back[target]

    def _reindex(self, old: Obj, new: Obj) -> None:
        """An update: same uuid, type, fq_name and parent; keep list positions."""
        self.objs[new.uuid] = new
        self.by_type[new.type][new.uuid] = new
        before = {t for _, t in old.ref_uuids()}
        after = {t for _, t in new.ref_uuids()}
        for target in before - after:
            referrers = self.back.get(target)
            if referrers is not None:
                referrers.pop(new.uuid, None)
                if not referrers:
                    del self.back[target]
        for target in after - before:
            self.back.setdefault(target, {})[new.uuid] = None

    # -- queries -------------------------------------------------------------------------------
    def get(self, uuid: str) -> Obj | None:
        return self.objs.get(uuid)

    def lookup(self, rtype: str, fq_name: Iterable[str]) -> str | None:
        return self.fqn.get((rtype, tuple(fq_name)))

    def begin(self) -> WriteSet:
        return WriteSet(self)


class WriteSet:
    """Changes staged by one request; reads see them; ``commit`` applies them atomically."""

    def __init__(self, db: ObjectDB) -> None:
        self.db = db
        self.objs: dict[str, Obj | None] = {}  # uuid -> new version, or None for deleted
        self.claims: dict[str, str | None] = {}
        self.keys: dict[str, bytes | None] = {}  # other raw keys (kv/, meta/)
        self.after_commit: list[Callable[[], None]] = []

    # -- reads through the overlay -----------------------------------------------------------
    def get(self, uuid: str) -> Obj | None:
        if uuid in self.objs:
            return self.objs[uuid]
        return self.db.objs.get(uuid)

    def lookup(self, rtype: str, fq_name: Iterable[str]) -> str | None:
        owner = self.claim_owner(fqn_claim(rtype, fq_name))
        return owner

    def claim_owner(self, key: str) -> str | None:
        if key in self.claims:
            return self.claims[key]
        return self.db.claims.get(key)

    def children_of(self, parent_uuid: str) -> list[Obj]:
        out: list[Obj] = []
        seen: set[str] = set()
        for cu in self.db.children.get(parent_uuid, {}):
            seen.add(cu)
            c = self.get(cu)
            if c is not None:
                out.append(c)
        for cu, c in self.objs.items():
            if cu not in seen and c is not None and c.parent_uuid == parent_uuid:
                out.append(c)
        return out

    def referrers_of(self, target_uuid: str) -> list[Obj]:
        out: list[Obj] = []
        seen: set[str] = set()
        candidates = list(self.db.back.get(target_uuid, {})) + list(self.objs)
        for ru in candidates:
            if ru in seen:
                continue
            seen.add(ru)
            r = self.get(ru)
            if r is not None and any(t == target_uuid for _, t in r.ref_uuids()):
                out.append(r)
        return out

    # -- writes --------------------------------------------------------------------------------
    def put(self, obj: Obj) -> None:
        self.objs[obj.uuid] = obj

    def delete(self, obj: Obj) -> None:
        self.objs[obj.uuid] = None
        self.release(fqn_claim(obj.type, obj.fq_name))

    def claim(self, key: str, owner: str) -> bool:
        """Take a uniqueness key; False when someone else holds it."""
        holder = self.claim_owner(key)
        if holder is not None and holder != owner:
            return False
        self.claims[key] = owner
        return True

    def release(self, key: str) -> None:
        self.claims[key] = None

    def put_key(self, key: str, value: Any) -> None:
        self.keys[key] = orjson.dumps(value)

    def delete_key(self, key: str) -> None:
        self.keys[key] = None

    # -- commit --------------------------------------------------------------------------------
    def commit(self) -> None:
        """Write everything in one store transaction, then index it.  Raises ``Conflict``
        when another writer committed since the index was current (the caller retries)."""
        db = self.db
        if not (self.objs or self.claims or self.keys):
            return
        writes: dict[str, bytes | None] = {}
        for uuid, o in self.objs.items():
            writes[OBJ + uuid] = None if o is None else o.to_json()
        for k, owner in self.claims.items():
            writes[k] = None if owner is None else owner.encode()
        writes.update(self.keys)
        with db.store.transaction(expect_revision=db.revision) as txn:
            for k, v in writes.items():
                if v is None:
                    txn.delete(k)
                else:
                    txn.put(k, v)
        # The store has it: now the index (objects are applied as the live copies).
        for uuid, o in self.objs.items():
            db.set_obj(uuid, o)
        for k, v in writes.items():
            if not k.startswith(OBJ):
                db.apply(k, v)
        db.revision = txn.revision
        for fn in self.after_commit:
            fn()
