"""JSON for the plugin through CPython's C accelerator ``_json``, without importing ``json``.

``import json`` costs about 6 ms, most of it ``json.decoder`` importing ``re`` (and ``re``
importing ``enum``) for regular expressions the C scanner does not need.  The plugin runs
once per container operation and start-up is its cost, so it decodes and encodes with the
same C functions ``json`` itself uses, given the defaults ``json.loads``/``json.dumps`` give
them.  Where ``_json`` is missing (another Python implementation), the ``json`` module is
used.  Decoding errors raise ``ValueError`` (``json.JSONDecodeError`` is one).
"""

from __future__ import annotations

TYPE_CHECKING = False  # no typing import at run time
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_WS = " \t\n\r"  # JSON's whitespace (RFC 8259 §2)


class _Context:
    """What the C scanner reads from a decoder: ``json.loads``'s defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> float:
        return {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}[name]


def _not_serializable(o: Any) -> Any:
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


try:
    from _json import encode_basestring_ascii, make_encoder, make_scanner
except ImportError:  # pragma: no cover - not CPython
    import json

    def loads(raw: bytes | str) -> Any:
        return json.loads(raw)

    def dumps(obj: Any) -> str:
        return json.dumps(obj)
else:
    # typeshed types the context as a scanner; the C code reads only the attributes above
    _scan: Callable[[str, int], tuple[Any, int]] = make_scanner(_Context())  # type: ignore[arg-type]

    def loads(raw: bytes | str) -> Any:
        """``json.loads`` for a document in UTF-8 (bytes) or text."""
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        start = len(text) - len(text.lstrip(_WS))
        try:
            obj, end = _scan(text, start)
        except StopIteration as e:
            raise ValueError(f"Expecting value: char {e.value}") from None
        except SystemError:
            # the scanner reports a syntax error through ``json.decoder`` only when that is
            # imported already: on this (rare) path, let ``json`` decode to say what is wrong
            import json

            return json.loads(text)
        rest = text[end:].lstrip(_WS)
        if rest:
            raise ValueError(f"Extra data: char {len(text) - len(rest)}")
        return obj

    def dumps(obj: Any) -> str:
        """``json.dumps`` with its defaults (ASCII, ``", "`` and ``": "`` separators)."""
        encode = make_encoder({}, _not_serializable, encode_basestring_ascii, None,
                              ": ", ", ", False, False, True)
        return "".join(encode(obj, 0))
