#!/usr/bin/env python3
"""Turn the reference dumps of the VNC schema into Tungsten's schema data files.

Input: ``vnc-types.txt`` and ``vnc-complex-types.txt`` (facts about TF's type schema: names,
parents, property types, ranges, refs).  Output: ``tungsten/model/data/resources.json`` and
``tungsten/model/data/complex_types.json``, the declarations the whole server is driven by.

The JSON files are committed; run this again only to import more types:
    python3 scripts/gen-schema.py ../shared/reference
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path
from typing import Any


def split_top(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets, parentheses and quotes."""
    parts: list[str] = []
    depth = 0
    quote = ""
    cur: list[str] = []
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        parts.append("".join(cur).strip())
    return parts


PROP_RE = re.compile(
    r"^(?P<name>\w+):(?P<type>\w+)(?P<restr>\[[^\]]*\])?(?P<flag>\([^)]*\))?(?:=(?P<default>.*))?$"
)


def parse_restriction(restr: str | None) -> dict[str, Any]:
    if not restr:
        return {}
    value = ast.literal_eval(restr)
    if value and all(isinstance(v, str) for v in value):
        return {"enum": value}
    if len(value) == 2 and all(isinstance(v, int) for v in value):
        return {"range": value}
    return {}


def parse_prop(text: str) -> tuple[str, dict[str, Any]]:
    m = PROP_RE.match(text.strip())
    if not m:
        raise ValueError(f"cannot parse property {text!r}")
    spec: dict[str, Any] = {"type": m["type"]}
    spec.update(parse_restriction(m["restr"]))
    flag = (m["flag"] or "").strip("()")
    if flag == "required":
        spec["required"] = True
    elif flag == "system-only":
        spec["system"] = True
    if m["default"] is not None:
        spec["default"] = ast.literal_eval(m["default"])
    return m["name"], spec


def parse_resources(text: str) -> dict[str, Any]:
    types: dict[str, Any] = {}
    cur: dict[str, Any] | None = None
    for line in text.splitlines():
        if line.startswith("== "):
            name = line.split()[1]
            cur = types[name] = {}
            continue
        if cur is None or not line.startswith("  "):
            continue
        line = line.strip()
        if line.startswith("parent_types:"):
            cur["parents"] = ast.literal_eval(line.split("parent_types:")[1].split("  ")[0].strip())
        elif line.startswith("props:"):
            body = line[len("props:") :].strip()
            cur["props"] = dict(parse_prop(p) for p in split_top(body)) if body else {}
        elif line.startswith("list props:"):
            lists, maps = line.split("map props:")
            cur["list_props"] = ast.literal_eval(lists.split(":", 1)[1].strip())
            cur["map_props"] = ast.literal_eval(maps.strip())
        elif line.startswith("refs:"):
            refs: dict[str, Any] = {}
            for r in split_top(line[len("refs:") :].strip()):
                m = re.match(r"^(\w+)->([\w-]+)(?:\[(\w+)\])?( derived)?$", r)
                if not m:
                    raise ValueError(f"cannot parse ref {r!r}")
                refs[m[1]] = {"to": m[2], "attr": m[3], "derived": bool(m[4])}
            cur["refs"] = refs
        elif line.startswith("children:"):
            children: dict[str, Any] = {}
            for c in split_top(line[len("children:") :].strip()):
                m = re.match(r"^(\w+)\(([\w-]+)(,derived)?\)$", c)
                if not m:
                    raise ValueError(f"cannot parse child {c!r}")
                children[m[1]] = {"type": m[2], "derived": bool(m[3])}
            cur["children"] = children
        elif line.startswith("back_refs:"):
            body = line[len("back_refs:") :].strip()
            cur["back_refs"] = [b.strip() for b in body.split(",") if b.strip()]
    return types


FIELD_RE = re.compile(r"^(?P<name>\w+):(?P<type>\w+)(?P<list>\[\])?(?: (?P<restr>\[.*\]))?$")


def parse_complex(text: str) -> dict[str, Any]:
    types: dict[str, Any] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, body = line.partition(":")
        fields: dict[str, Any] = {}
        for f in split_top(body.strip()):
            m = FIELD_RE.match(f)
            if not m:
                raise ValueError(f"cannot parse field {f!r} of {name}")
            spec: dict[str, Any] = {"type": m["type"]}
            if m["list"]:
                spec["list"] = True
            spec.update(parse_restriction(m["restr"]))
            fields[m["name"]] = spec
        types[name.strip()] = fields
    return types


def main() -> None:
    ref = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/reference")
    out = Path(__file__).resolve().parent.parent / "tungsten" / "model" / "data"
    out.mkdir(parents=True, exist_ok=True)
    resources = parse_resources((ref / "vnc-types.txt").read_text())
    complex_types = parse_complex((ref / "vnc-complex-types.txt").read_text())
    for path, data in (("resources.json", resources), ("complex_types.json", complex_types)):
        (out / path).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"{len(resources)} resource types, {len(complex_types)} complex types -> {out}")


if __name__ == "__main__":
    main()
