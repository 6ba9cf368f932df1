"""MkDocs hook: generate the API reference page from the schema at build time.

The page ``api-reference.md`` is never written to disk: ``on_files`` adds it as a generated
file, built from ``tungsten.model.schema.load_schema()``, so the reference always matches the
schema the server runs with.  Registered under ``hooks:`` in ``mkdocs.yml``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

# Build from the checkout even when mkdocs runs outside the project's virtualenv.
_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from tungsten.model.schema import (  # noqa: E402
    COMMON_PROPS,
    CONFIG_ROOT,
    SIMPLE_TYPES,
    FieldSpec,
    ResourceType,
    Schema,
    load_schema,
)

PAGE = "api-reference.md"


def on_files(files: Files, config: Any) -> Files:
    existing = files.get_file_from_path(PAGE)
    if existing is not None:
        files.remove(existing)
    files.append(File.generated(config, PAGE, content=render(load_schema())))
    return files


# ----------------------------------------------------------------------------------------------
# rendering
def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _type_link(schema: Schema, type_name: str | None) -> str:
    """A property/attribute type: simple types as code, complex types linked."""
    if not type_name:
        return ""
    if type_name in SIMPLE_TYPES:
        return f"`{type_name}`"
    if type_name in schema.complex:
        return f"[`{type_name}`](#{type_name})"
    return f"`{type_name}` (undescribed: any JSON accepted)"


def _res_link(schema: Schema, name: str) -> str:
    if name == CONFIG_ROOT:
        return "`config-root`"
    if schema.resource(name) is not None:
        return f"[`{name}`](#{name})"
    return f"`{name}` (not served)"


def _constraints(spec: FieldSpec) -> str:
    parts = []
    if spec.enum is not None:
        parts.append("one of " + ", ".join(f"`{v}`" for v in spec.enum))
    if spec.range is not None:
        parts.append(f"range [{spec.range[0]}, {spec.range[1]}]")
    return "; ".join(parts)


def _flags(spec: FieldSpec) -> str:
    flags = []
    if spec.required:
        flags.append("required")
    if spec.system:
        flags.append("system-only")
    return ", ".join(flags)


def _default(spec: FieldSpec) -> str:
    if spec.default is None:
        return ""
    value = spec.default
    if isinstance(value, bool):
        value = str(value).lower()
    return f"`{value}`"


def _field_type(schema: Schema, spec: FieldSpec) -> str:
    t = _type_link(schema, spec.type)
    return f"list of {t}" if spec.is_list else t


def _props_table(schema: Schema, rt: ResourceType, names: list[str]) -> list[str]:
    out = [
        "| property | type | constraints | schema default | flags |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in names:
        spec = rt.props[name]
        coll = rt.collections.get(name)
        if coll is not None:
            key = f", keyed by `{coll.key_name}`" if coll.key_name else ""
            ftype = (
                f"{coll.kind}: `{{\"{coll.wrapper}\": [...]}}` of "
                f"{_type_link(schema, coll.element_type)}{key}"
            )
        else:
            ftype = _field_type(schema, spec)
        out.append(
            f"| `{name}` | {_cell(ftype)} | {_cell(_constraints(spec))} | "
            f"{_cell(_default(spec))} | {_flags(spec)} |"
        )
    return out


def _resource(schema: Schema, rt: ResourceType) -> list[str]:
    out = [
        f"### {rt.name} {{ #{rt.name} }}",
        "",
        f"Collection `/{rt.plural}` (POST, GET); object `/{rt.name}/<uuid>` (GET, PUT, DELETE); "
        f"body key `\"{rt.name}\"` (or `\"{rt.obj_type}\"`).",
        "",
        "**Parents:** " + ", ".join(_res_link(schema, p) for p in rt.parents)
        if rt.parents
        else "**Parents:** none",
        "",
    ]
    own = [p for p in rt.props if p not in COMMON_PROPS]
    if own:
        out += ["**Properties** (besides the [common ones](#common-properties)):", ""]
        out += _props_table(schema, rt, own)
        out.append("")
    else:
        out += ["**Properties:** only the [common ones](#common-properties).", ""]
    if rt.refs:
        out += [
            "**Refs** (`<field>: [{\"to\": fq_name, \"uuid\": ..., \"attr\": ...}]`):",
            "",
            "| field | to | link attribute | derived |",
            "| --- | --- | --- | --- |",
        ]
        for f, r in rt.refs.items():
            attr = _type_link(schema, r.attr) if r.attr else "none (`attr` is null)"
            out.append(
                f"| `{f}` | {_res_link(schema, r.to)} | {_cell(attr)} | "
                f"{'yes' if r.derived else ''} |"
            )
        out.append("")
    if rt.children:
        out += ["**Children** (read-only on this object):", "",
                "| field | type | derived |", "| --- | --- | --- |"]
        for f, c in rt.children.items():
            out.append(f"| `{f}` | {_res_link(schema, c.type)} | {'yes' if c.derived else ''} |")
        out.append("")
    if rt.back_refs:
        links = []
        for b in rt.back_refs:
            referrer = b[: -len("_back_refs")] if b.endswith("_back_refs") else b
            by = schema.resource(referrer)
            links.append(f"[`{b}`](#{by.name})" if by is not None else f"`{b}`")
        out += ["**Back refs** (read-only): " + ", ".join(links), ""]
    return out


def _complex(schema: Schema, name: str, fields: dict[str, FieldSpec]) -> list[str]:
    out = [f"### {name} {{ #{name} }}", ""]
    if not fields:
        return [*out, "No fields.", ""]
    out += ["| field | type | constraints |", "| --- | --- | --- |"]
    for f, spec in fields.items():
        out.append(
            f"| `{f}` | {_cell(_field_type(schema, spec))} | {_cell(_constraints(spec))} |"
        )
    return [*out, ""]


def render(schema: Schema) -> str:
    types = sorted(schema.types.values(), key=lambda t: t.name.lower())
    root_children = ", ".join(
        _res_link(schema, c.type) for c in sorted(schema.root_children.values(),
                                                  key=lambda c: c.type)
    )
    lines = [
        "# API reference",
        "",
        "<!-- Generated at docs build time by docs/hooks/api_reference.py from "
        "tungsten.model.schema; do not edit. -->",
        "",
        f"Every resource type the config API serves ({len(types)}) and every complex type "
        f"({len(schema.complex)}), generated from the schema the server runs with "
        "(`tungsten/model/data/*.json`). How to read it:",
        "",
        "- **schema default** is informational: like TF, the server does not fill schema "
        "defaults in, so a property the client did not send is absent on read (some hooks "
        "set their own values; see the [config API guide](config-api.md#server-side-semantics)).",
        "- **required** and **system-only** are the schema's flags. The server does not "
        "enforce them in general; the type hooks enforce the ones clients rely on.",
        "- **derived** children are created by the system; they never block the parent's "
        "delete and are deleted with it. A **derived** ref never blocks its target's delete.",
        "- Values are checked against their types: strings, integers (integral strings are "
        "accepted) and booleans, enums and ranges, and complex types field by field (an "
        "unknown field is a 400). `null` is accepted everywhere and means \"unset\".",
        "- Types marked *not served* appear in TF's schema but not in ours: a ref to one "
        "cannot be set, and a parent of that type cannot exist.",
        "",
        "## Common properties",
        "",
        "Every resource type has these besides its own:",
        "",
    ]
    any_rt = types[0]
    lines += _props_table(schema, any_rt, list(COMMON_PROPS))
    lines += [
        "",
        "The server fills `id_perms` (uuid halves, `created`, `last_modified`, permissions) "
        "and `perms2` (owner, access, share) on create; on update only `id_perms.enable` and "
        "`id_perms.description` change. `display_name` defaults to the last element of "
        "`fq_name`.",
        "",
        "## Resource types",
        "",
        f"Children of `config-root` (one-element fq_names): {root_children}.",
        "",
        "| type | parents |",
        "| --- | --- |",
    ]
    for rt in types:
        parents = ", ".join(_res_link(schema, p) for p in rt.parents)
        lines.append(f"| [`{rt.name}`](#{rt.name}) | {parents} |")
    lines.append("")
    for rt in types:
        lines += _resource(schema, rt)
    lines += [
        "## Complex types",
        "",
        "Structured values of properties and link attributes, sent as JSON objects whose keys "
        "are the fields below.",
        "",
    ]
    for name in sorted(schema.complex, key=str.lower):
        lines += _complex(schema, name, schema.complex[name])
    return "\n".join(lines) + "\n"
