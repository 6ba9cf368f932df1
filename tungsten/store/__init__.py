"""Config stores: the ``ConfigStore`` interface and its backends, opened by URL."""

from __future__ import annotations

from tungsten.store.base import Change, Compacted, ConfigStore, Conflict, StoreError, Txn

__all__ = ["Change", "Compacted", "ConfigStore", "Conflict", "StoreError", "Txn", "open_store"]


def open_store(url: str) -> ConfigStore:
    """Open a store by URL: ``sqlite:///ABS/PATH`` or ``sqlite:///:memory:``."""
    if url.startswith("sqlite:///"):
        from tungsten.store.sqlite import SqliteStore

        path = url[len("sqlite:///") :]
        if path != ":memory:" and not path.startswith("/"):
            raise StoreError(
                f"store URL {url!r}: the SQLite path must be absolute (sqlite:///ABS/PATH)"
            )
        if not path:
            raise StoreError("store URL has no path: use sqlite:///ABS/PATH or sqlite:///:memory:")
        return SqliteStore(path)
    scheme = url.split(":", 1)[0] if ":" in url else url
    raise StoreError(
        f"unsupported store URL {url!r} (scheme {scheme!r}); "
        "use sqlite:///ABS/PATH or sqlite:///:memory:"
    )
