"""The plugin's JSON through ``_json`` agrees with ``json``, and the plugin never imports
``json`` (nor ``re``) on its way to the agent: that is the start-up cost ``cjson`` removes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tungsten.cni import cjson

ROOT = Path(__file__).resolve().parents[2]

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20)


@given(values)
def test_round_trip_matches_json(v: Any) -> None:
    assert cjson.dumps(v) == json.dumps(v)
    assert cjson.loads(json.dumps(v)) == json.loads(json.dumps(v))
    assert cjson.loads(json.dumps(v, indent=2).encode()) == v


@pytest.mark.parametrize("bad", ["", "  ", "{", "[1] x", '{"a": }', "[1,]", '{"a" 1}',
                                 "nul", b"\xff\xfe"])
def test_bad_documents_raise_value_error(bad: str | bytes) -> None:
    with pytest.raises(ValueError):
        json.loads(bad)  # the reference agrees it is bad
    with pytest.raises(ValueError):
        cjson.loads(bad)


def test_unserializable_is_type_error() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        cjson.dumps({"a": object()})


def test_plugin_path_imports_neither_json_nor_re() -> None:
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import tungsten.cni.plugin; "
            "from tungsten.cni import cjson; cjson.dumps(cjson.loads('{\"a\": [1.5]}')); "
            "print(sorted(m for m in ('json', 're', 'enum', 'typing') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(ROOT)],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.strip() == "[]"


def test_syntax_error_without_json_imported_is_value_error() -> None:
    # the C scanner needs ``json.decoder`` imported to describe an error: cjson falls back
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from tungsten.cni import cjson\n"
            "try:\n    cjson.loads('{\"a\" 1}')\nexcept ValueError as e:\n    print('ok', e)")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(ROOT)],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.startswith("ok Expecting ':' delimiter")
