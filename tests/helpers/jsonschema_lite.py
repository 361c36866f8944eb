"""A small JSON Schema validator: the keywords docs/diagnose.schema.json uses, nothing more.

type (one or a list), const, enum, pattern, minLength, minimum, properties, required,
additionalProperties (false or a schema), items.  Any other keyword is an error, so the schema
cannot silently use one this validator ignores.  ``errors(doc, schema)`` lists
"<path>: <problem>" strings (empty: valid).
"""
from __future__ import annotations

import re

KNOWN = {"$schema", "$id", "title", "description", "type", "const", "enum", "pattern",
         "minLength", "minimum", "properties", "required", "additionalProperties", "items"}
TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
}


def errors(doc, schema: dict, path: str = "$") -> list[str]:
    unknown = set(schema) - KNOWN
    if unknown:
        return [f"{path}: schema keyword(s) {sorted(unknown)} not supported by this validator"]
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(TYPES[t](doc) for t in types):
            return [f"{path}: {doc!r} is not of type {types}"]
    return _value_errors(doc, schema, path) + _container_errors(doc, schema, path)


def _value_errors(doc, schema: dict, path: str) -> list[str]:
    out: list[str] = []
    if "const" in schema and doc != schema["const"]:
        out.append(f"{path}: {doc!r} != {schema['const']!r}")
    if "enum" in schema and not any(doc == e and type(doc) is type(e) for e in schema["enum"]):
        out.append(f"{path}: {doc!r} not one of {schema['enum']}")
    if isinstance(doc, str):
        if "pattern" in schema and not re.search(schema["pattern"], doc):
            out.append(f"{path}: {doc!r} does not match {schema['pattern']}")
        if len(doc) < schema.get("minLength", 0):
            out.append(f"{path}: shorter than {schema['minLength']}")
    if TYPES["number"](doc) and "minimum" in schema and doc < schema["minimum"]:
        out.append(f"{path}: {doc} < {schema['minimum']}")
    return out


def _container_errors(doc, schema: dict, path: str) -> list[str]:
    out: list[str] = []
    if isinstance(doc, dict):
        for key in schema.get("required", ()):
            if key not in doc:
                out.append(f"{path}: missing {key!r}")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, value in doc.items():
            if key in props:
                out += errors(value, props[key], f"{path}.{key}")
            elif extra is False:
                out.append(f"{path}: unexpected property {key!r}")
            elif isinstance(extra, dict):
                out += errors(value, extra, f"{path}.{key}")
    if isinstance(doc, list) and "items" in schema:
        for i, item in enumerate(doc):
            out += errors(item, schema["items"], f"{path}[{i}]")
    return out
