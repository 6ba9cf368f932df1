"""One active transformer: a lease held in the config store.

The lease is one key, ``lease/transformer`` = ``{"holder": NAME, "expires": UNIX TIME}``,
read and written in one store transaction, so two candidates can never both take it.  The
holder renews it well before it expires; a candidate takes it once it has expired (the
holder died or lost the store).  Expiry is wall-clock time because the candidates are
different processes; they are expected to share a clock (one machine, or NTP).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from tungsten.store import ConfigStore

LEASE_KEY = "lease/transformer"


@dataclass(frozen=True)
class Lease:
    holder: str
    expires: float


def read_lease(store: ConfigStore, key: str = LEASE_KEY) -> Lease | None:
    raw = store.get(key)
    return _parse(raw)


def _parse(raw: bytes | None) -> Lease | None:
    if raw is None:
        return None
    try:
        d = orjson.loads(raw)
        return Lease(str(d["holder"]), float(d["expires"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None  # unreadable: treated as free, and overwritten by the next holder


def acquire(store: ConfigStore, holder: str, lease_s: float, now: float,
            key: str = LEASE_KEY) -> tuple[bool, Lease | None]:
    """Take or renew the lease for ``holder`` unless someone else holds an unexpired one.
    Returns (held by ``holder`` now, the lease as it stands)."""
    with store.transaction() as txn:
        current = _parse(txn.get(key))
        if current is not None and current.holder != holder and current.expires > now:
            return False, current  # nothing written: no revision spent
        mine = Lease(holder, now + lease_s)
        txn.put(key, orjson.dumps({"holder": mine.holder, "expires": mine.expires}))
    return True, mine


def release(store: ConfigStore, holder: str, key: str = LEASE_KEY) -> None:
    """Give the lease up (on a clean stop), so a standby takes over at once."""
    with store.transaction() as txn:
        current = _parse(txn.get(key))
        if current is not None and current.holder == holder:
            txn.delete(key)


def holds(store: ConfigStore, holder: str, now: float, key: str = LEASE_KEY) -> bool:
    current = read_lease(store, key)
    return current is not None and current.holder == holder and current.expires > now
