"""Encoding of control-node messages from pre-encoded pieces (pure).

A delta is written as a per-session header (type and revision) followed by a *body*; the body
is assembled from fragments -- the members of a JSON object or the items of a JSON array,
without their brackets -- so that one routing instance's changes are encoded once and the same
body bytes serve every agent whose view changed the same way.
"""

from __future__ import annotations

from typing import Any

import orjson

Fragments = dict[str, list[bytes]]  # collection -> non-empty fragments


def members(d: dict[str, Any]) -> bytes:
    """``{"a":1,"b":2}`` -> ``"a":1,"b":2`` (empty for an empty dict)."""
    return orjson.dumps(d)[1:-1]


def items(seq: list[Any]) -> bytes:
    """``["a","b"]`` -> ``"a","b"``."""
    return orjson.dumps(seq)[1:-1]


def add(frags: Fragments, coll: str, frag: bytes) -> None:
    if frag:
        frags.setdefault(coll, []).append(frag)


def delta_body(upsert: Fragments, remove: Fragments) -> bytes:
    """The part of a delta message after its revision: ``"upsert":{..},"remove":{..}}``."""
    up = b",".join(b'"%s":{%s}' % (c.encode(), b",".join(f)) for c, f in sorted(upsert.items()))
    rm = b",".join(b'"%s":[%s]' % (c.encode(), b",".join(f)) for c, f in sorted(remove.items()))
    return b'"upsert":{' + up + b'},"remove":{' + rm + b"}}"


def delta(revision: int, body: bytes) -> bytes:
    return b'{"type":"delta","revision":%d,' % revision + body


def snapshot(session: str, revision: int, config: dict[str, Any], routes: list[bytes]) -> bytes:
    """A snapshot message: the config collections plus routes given as object members."""
    view = members(config)
    return (
        b'{"type":"snapshot","session":' + orjson.dumps(session)
        + b',"revision":%d,"view":{' % revision
        + view + (b"," if view else b"")
        + b'"routes":{' + b",".join(r for r in routes if r) + b"}}}"
    )
