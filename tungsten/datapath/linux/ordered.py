"""Ordered first-match rule lists compiled into a few nftables set lookups (pure).

A rule list (a network's ACL, a port's firewall rules) is first-match: the first rule whose
fields match decides ``pass`` or ``deny``.  Walking it as nft rules costs a packet one test
per rule.  Here the list is cut into maximal **runs** of consecutive rules with the same
action; each run becomes one named interval set per IP version, keyed like the SG sets by
``l4proto . saddr . daddr . sport . dport``, and the chain tests the runs in order::

    meta nfproto ipv4  <key> @<set of run 0, v4>  return     (a run of pass rules)
    meta nfproto ipv6  <key> @<set of run 0, v6>  return
    meta nfproto ipv4  <key> @<set of run 1, v4>  drop       (a run of deny rules)
    ...
    drop

Inside a run the order does not matter (every rule has the same verdict) and the runs keep
their order, so the first match decides as before; a packet costs one lookup per run, i.e.
per change of action along the list, not per rule.  A rule is a union of **boxes** (a span
per key field); a protocol without ports spans every port (``th sport``/``dport`` read
whatever follows the IP header, and ``0-65535`` matches it).  Rules that must stay nft rules
of their own (logged rules: a counter, a log statement, a ct mark) end the run before them.

The kernel refuses an element whose first or last key falls inside an element the set holds,
so a run's boxes are made pairwise disjoint (``disjoint``) before they become elements: a box
inside a larger one vanishes, a partial overlap is cut into pieces.

The agent plans from its whole state on every apply; compiled steps (keyed by the rule's
text and its context) and the elements of runs of unchanged steps are memoised (``Memo``),
so only changed rules and the runs holding them are compiled again.  Planned elements are
``Elements``: an immutable tuple that carries its elements' keys (what the diff against the
installed set compares), computed once per box however many plans reuse it.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Json = dict[str, Any]
Expr = tuple[Json, ...]
Span = tuple[int, int]
Box = tuple[Span, Span, Span, Span, Span]  # l4proto, saddr, daddr, sport, dport
SetSpec = tuple[str, tuple[str, ...], Sequence[Json]]  # (name, type, elements)

FAMILIES = {4: ("ipv4", "ip"), 6: ("ipv6", "ip6")}
SET_TYPES = {4: ("inet_proto", "ipv4_addr", "ipv4_addr", "inet_service", "inet_service"),
             6: ("inet_proto", "ipv6_addr", "ipv6_addr", "inet_service", "inet_service")}
ANY_PROTO: Span = (0, 255)
ANY_PORT: Span = (0, 65535)
ALL_ADDRS: dict[int, Span] = {4: (0, 2**32 - 1), 6: (0, 2**128 - 1)}


# --- spans of addresses ------------------------------------------------------------------------


def net_span(n: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Span:
    return int(n.network_address), int(n.broadcast_address)


def merge(spans: Iterable[Span]) -> list[Span]:
    """Sorted, overlapping or adjacent spans joined."""
    out: list[Span] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def intersect(a: Sequence[Span], b: Sequence[Span]) -> list[Span]:
    return merge((max(x[0], y[0]), min(x[1], y[1])) for x in a for y in b
                 if x[0] <= y[1] and y[0] <= x[1])


def minus(a: Sequence[Span], b: Sequence[Span]) -> list[Span]:
    """What of ``a`` lies outside every span of ``b``."""
    out: list[Span] = []
    cut = merge(b)
    for lo, hi in merge(a):
        for blo, bhi in cut:
            if bhi < lo or blo > hi:
                continue
            if blo > lo:
                out.append((lo, blo - 1))
            lo = bhi + 1
            if lo > hi:
                break
        if lo <= hi:
            out.append((lo, hi))
    return out


# --- boxes -------------------------------------------------------------------------------------


def volume(b: Box) -> int:
    v = 1
    for lo, hi in b:
        v *= hi - lo + 1
    return v


def _overlap(a: Box, b: Box) -> bool:
    return all(x[0] <= y[1] and y[0] <= x[1] for x, y in zip(a, b, strict=True))


def _subtract(b: Box, a: Box) -> list[Box]:
    """``b`` minus ``a`` (which overlaps it) as disjoint boxes."""
    pieces: list[Box] = []
    cur = list(b)
    for i in range(5):
        lo, hi = cur[i]
        alo, ahi = a[i]
        if lo < alo:
            pieces.append(tuple([*cur[:i], (lo, alo - 1), *cur[i + 1:]]))  # type: ignore[arg-type]
        if ahi < hi:
            pieces.append(tuple([*cur[:i], (ahi + 1, hi), *cur[i + 1:]]))  # type: ignore[arg-type]
        cur[i] = (max(lo, alo), min(hi, ahi))
    return pieces


def disjoint(boxes: Iterable[Box]) -> list[Box]:
    """The union of ``boxes`` as pairwise disjoint boxes (sorted).  Largest first: a box
    inside one taken before vanishes; a partial overlap keeps only what is new.  Candidate
    overlaps come from a sweep along the field with the most distinct spans, so thousands
    of rules differing in one field cost a sort, not all pairs."""
    uniq = sorted(set(boxes), key=lambda b: (-volume(b), b))
    if len(uniq) < 2:
        return uniq
    dim = max(range(5), key=lambda i: len({b[i] for b in uniq}))
    partners: dict[int, list[int]] = {}
    active: list[int] = []
    for k in sorted(range(len(uniq)), key=lambda k: uniq[k][dim]):
        lo = uniq[k][dim][0]
        active = [j for j in active if uniq[j][dim][1] >= lo]
        for j in active:
            if _overlap(uniq[j], uniq[k]):
                partners.setdefault(max(j, k), []).append(min(j, k))
        active.append(k)
    pieces: list[list[Box]] = []
    for k, box in enumerate(uniq):
        parts = [box]
        for j in sorted(partners.get(k, ())):
            for a in pieces[j]:
                parts = [p for q in parts
                         for p in (_subtract(q, a) if _overlap(q, a) else [q])]
        pieces.append(parts)
    return sorted(p for ps in pieces for p in ps)


Joined = tuple[frozenset[Box], list[Box]]  # (boxes, disjoint(boxes))
UPDATE_LIMIT = 16  # boxes come or go: beyond this many, ``disjoint`` is as cheap


def _overlaps_another(a: Box, boxes: Iterable[Box]) -> bool:
    (p0, p1), (s0, s1), (d0, d1), (x0, x1), (y0, y1) = a
    return any(b[1][0] <= s1 and s0 <= b[1][1] and b[2][0] <= d1 and d0 <= b[2][1]
               and b[0][0] <= p1 and p0 <= b[0][1] and b[3][0] <= x1 and x0 <= b[3][1]
               and b[4][0] <= y1 and y0 <= b[4][1] and b != a for b in boxes)


def disjoint_update(last: Joined | None, boxes: frozenset[Box]) -> Joined:
    """``(boxes, disjoint(boxes))``, from ``last`` (the result for other boxes) when few
    boxes came or went and none of them overlaps another: such a box is whole in
    ``disjoint``'s result and no other box's pieces depend on it, so the result is the
    last one plus or minus those boxes.  Otherwise ``disjoint`` from scratch."""
    if last is not None:
        old, out = last
        if old == boxes:
            return last
        added, removed = boxes - old, old - boxes
        if (len(added) + len(removed) <= UPDATE_LIMIT
                and not any(_overlaps_another(b, old) for b in removed)
                and not any(_overlaps_another(b, boxes) for b in added)):
            kept = [b for b in out if b not in removed] if removed else list(out)
            return boxes, sorted(kept + list(added))
    return boxes, disjoint(boxes)


def box_elem(b: Box, version: int) -> Json:
    """A box as a concatenated set element (an address span that is one prefix is written
    as one; ranges otherwise)."""
    def num(s: Span) -> Any:
        return s[0] if s[0] == s[1] else {"range": [s[0], s[1]]}

    return {"concat": [num(b[0]), _addr(b[1], version), _addr(b[2], version), num(b[3]),
                       num(b[4])]}


@functools.lru_cache(maxsize=1 << 16)  # the same addresses recur in every plan
def _addr_text(value: int, version: int) -> str:
    return str(ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value))


def _addr(s: Span, version: int) -> Any:
    bits = 32 if version == 4 else 128
    size = s[1] - s[0] + 1
    if size & (size - 1) == 0 and s[0] % size == 0:  # one prefix (the common case)
        plen = bits - (size.bit_length() - 1)
        text = _addr_text(s[0], version)
        return text if plen == bits else {"prefix": {"addr": text, "len": plen}}
    return {"range": [_addr_text(s[0], version), _addr_text(s[1], version)]}


def elem_key(elem: Any) -> str:
    """An element's identity in the diff against the installed set (``acl.commands``)."""
    return json.dumps(elem, sort_keys=True, separators=(",", ":"))


@functools.lru_cache(maxsize=1 << 17)  # boxes recur in every plan of an unchanged rule
def _box_entry(b: Box, version: int) -> tuple[str, Json]:
    elem = box_elem(b, version)
    return elem_key(elem), elem


class Elements(tuple[Json, ...]):
    """A set's planned elements (read-only: plans share them) with ``by_key`` (element key
    -> element), made once however many applies compare them."""

    by_key: dict[str, Json]

    def __new__(cls, entries: Iterable[tuple[str, Json]]) -> Elements:
        pairs = list(entries)
        self = super().__new__(cls, [e for _, e in pairs])
        self.by_key = dict(pairs)
        return self


def elements(boxes: Iterable[Box], version: int) -> Elements:
    """Disjoint boxes as a set's elements (each box's element and key made once)."""
    return Elements(_box_entry(b, version) for b in boxes)


def key_match(version: int, set_name: str) -> Json:
    """``<l4proto . saddr . daddr . sport . dport> @set_name``."""
    proto = FAMILIES[version][1]
    key = {"concat": [{"meta": {"key": "l4proto"}},
                      {"payload": {"protocol": proto, "field": "saddr"}},
                      {"payload": {"protocol": proto, "field": "daddr"}},
                      {"payload": {"protocol": "th", "field": "sport"}},
                      {"payload": {"protocol": "th", "field": "dport"}}]}
    return {"match": {"op": "==", "left": key, "right": f"@{set_name}"}}


def nfproto(version: int) -> Json:
    return {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}},
                      "right": FAMILIES[version][0]}}


# --- ordered lists -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One rule of an ordered list: boxes per IP version (set elements), or, when
    ``boxes`` is None, nft rules of its own (``rules``) that end the run before them."""

    accept: bool
    boxes: Mapping[int, Sequence[Box]] | None = field(default=None)
    rules: tuple[Expr, ...] = ()
    # what the step was compiled from (the rule and its context), when the caller knows it:
    # a run of steps with keys reuses the elements compiled for the same run before
    key: Hashable | None = field(default=None, compare=False)


class Memo:
    """A bounded memo of pure results (the oldest half goes when it is full).  Plans are
    recomputed from the whole state on every apply, and most rules did not change."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data: dict[Hashable, Any] = {}

    def peek(self, key: Hashable) -> Any:
        return self.data.get(key)

    def put(self, key: Hashable, value: Any) -> None:
        if self.size <= 0:
            return
        if key not in self.data and len(self.data) >= self.size:
            for old in list(self.data)[: self.size // 2]:
                del self.data[old]
        self.data[key] = value

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        if self.size <= 0:  # a memo of size 0 remembers nothing (uncached planning)
            return make()
        try:
            return self.data[key]
        except KeyError:
            pass
        value = make()
        self.put(key, value)
        return value


STEPS = Memo(1 << 16)  # (rule, context) -> Step, for the callers that build steps
_RUN_ELEMENTS = Memo(256)  # (step keys of a run, IP version) -> the run's set elements
# set name -> its last (boxes, disjoint boxes): a hint for ``disjoint_update``, which checks
# it against the content (a rule added to a long run joins one box, not the run again)
_JOINED = Memo(256)


def digest(value: Any) -> str:
    """A short stable name for a context (a VRF's endpoints, a network map) in memo keys."""
    return hashlib.sha256(repr(value).encode()).hexdigest()[:32]


SetNamer = Callable[[bool, int, int], str]  # (accept, run number, IP version) -> set name


def compile_ordered(steps: Iterable[Step], set_name: SetNamer
                    ) -> tuple[tuple[Expr, ...], list[SetSpec]]:
    """The chain (ending in drop: nothing matched) and its named sets for an ordered
    first-match list.  The chain depends only on the sequence of actions and own-rule
    steps, so a change of addresses, ports or members is a change of set elements."""
    rules: list[Expr] = []
    sets: list[SetSpec] = []
    run: list[Step] = []
    count = 0

    def close() -> None:
        nonlocal count
        if not run:
            return
        accept = run[0].accept
        verdict: Json = {"return": None} if accept else {"drop": None}
        keys = tuple(s.key for s in run)
        for version in (4, 6):
            name = set_name(accept, count, version)

            def make(v: int = version, name: str = name) -> Elements:
                boxes = frozenset(b for s in run for b in (s.boxes or {}).get(v, ()))
                joined = disjoint_update(_JOINED.peek(name), boxes)
                _JOINED.put(name, joined)
                return elements(joined[1], v)

            elems = (_RUN_ELEMENTS.get((keys, version), make)
                     if all(k is not None for k in keys) else make())
            sets.append((name, SET_TYPES[version], elems))
            rules.append((nfproto(version), key_match(version, name), verdict))
        count += 1
        run.clear()

    for step in steps:
        if step.boxes is None:
            close()
            rules.extend(step.rules)
            continue
        if run and run[0].accept != step.accept:
            close()
        run.append(step)
    close()
    rules.append(({"drop": None},))
    return tuple(rules), sets
