#!/usr/bin/env python3
"""Writes forge_sdk/types.py from the forge's OpenAPI document: one
dataclass per object schema, a Literal per enum, so the SDK's types follow
the server's.

    python3 scripts/gen_types.py           write forge_sdk/types.py
    python3 scripts/gen_types.py --check   exit 1 when it differs from the file
"""

from __future__ import annotations

import json
import keyword
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OPENAPI = HERE.parent.parent / "openapi.json"
OUT = HERE.parent / "forge_sdk" / "types.py"


def ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


class Generator:
    def __init__(self, doc: dict):
        self.schemas: dict = doc.get("components", {}).get("schemas", {})
        self.blocks: list[str] = []

    def type_of(self, schema: dict, hint: str) -> str:
        """The Python annotation of `schema` (`hint` names an inline object)."""
        shaped = ("$ref", "enum", "oneOf", "anyOf", "allOf", "type", "properties")
        if not isinstance(schema, dict) or not any(k in schema for k in shaped):
            return "Any"
        if "$ref" in schema:
            return f'"{ref_name(schema["$ref"])}"'
        if "enum" in schema:
            return "Literal[" + ", ".join(json.dumps(v) for v in schema["enum"]) + "]"
        if "oneOf" in schema or "anyOf" in schema:
            parts = schema.get("oneOf") or schema.get("anyOf")
            types = [self.type_of(p, hint + variant(p, i)) for i, p in enumerate(parts)]
            return union(types)
        if "allOf" in schema:
            return f'"{self.object_class(hint, schema)}"'
        kinds = schema["type"] if isinstance(schema.get("type"), list) else [schema.get("type")]
        return union([self.single(k, schema, hint) for k in kinds])

    def single(self, kind, schema: dict, hint: str) -> str:
        if kind == "null":
            return "None"
        if kind == "string":
            return "str"
        if kind == "integer":
            return "int"
        if kind == "number":
            return "float"
        if kind == "boolean":
            return "bool"
        if kind == "array":
            return f"List[{self.type_of(schema.get('items', {}), hint + 'Item')}]"
        if kind in ("object", None):
            if not schema.get("properties"):
                extra = schema.get("additionalProperties")
                value = self.type_of(extra, hint + "Value") if isinstance(extra, dict) else "Any"
                return f"Dict[str, {value}]"
            return f'"{self.object_class(hint, schema)}"'
        raise ValueError(f"unknown schema type {kind}")

    def fields_of(self, schema: dict, hint: str) -> tuple[dict, set]:
        """Properties and required names, with allOf parts merged."""
        props: dict = {}
        required: set = set()
        for part in schema.get("allOf", []):
            if "$ref" in part:
                part = self.schemas[ref_name(part["$ref"])]
            p, r = self.fields_of(part, hint)
            props.update(p)
            required |= r
        props.update(schema.get("properties", {}))
        required |= set(schema.get("required", []))
        return props, required

    def object_class(self, name: str, schema: dict) -> str:
        props, required = self.fields_of(schema, name)
        lines = ["@dataclass", f"class {name}:"]
        doc = schema.get("description")
        if doc:
            lines.append(docstring(doc, "    "))
        # Required fields first: a dataclass's defaults come last.
        ordered = sorted(props, key=lambda n: (n not in required, n))
        for field in ordered:
            prop = props[field]
            annotation = self.type_of(prop, name + camel(field))
            attr = field + "_" if keyword.iskeyword(field) else field
            if field in required:
                lines.append(f"    {attr}: {annotation}")
            else:
                lines.append(f"    {attr}: Optional[{annotation}] = None")
            if prop.get("description"):
                lines.append(docstring(prop["description"], "    "))
        if not props:
            lines.append("    pass")
        self.blocks.append("\n".join(lines))
        return name

    def top(self, name: str, schema: dict) -> None:
        is_object = (
            "allOf" in schema
            or schema.get("type") == "object"
            or ("properties" in schema and "type" not in schema)
        )
        if is_object and (schema.get("properties") or "allOf" in schema):
            self.object_class(name, schema)
            return
        alias = self.type_of(schema, name)
        lines = []
        if schema.get("description"):
            lines.append("# " + schema["description"].strip().replace("\n", "\n# "))
        lines.append(f"{name} = {alias.strip(chr(34))}" if alias.startswith('"') else f"{name} = {alias}")
        self.blocks.append("\n".join(lines))

    def generate(self) -> str:
        for name in sorted(self.schemas):
            self.top(name, self.schemas[name])
        head = (
            '"""The forge API\'s types, generated from sdk/openapi.json by\n'
            "scripts/gen_types.py. Do not edit: run `python3 scripts/gen_types.py`.\n"
            '"""\n\n'
            "from __future__ import annotations\n\n"
            "from dataclasses import dataclass\n"
            "from typing import Any, Dict, List, Literal, Optional, Union\n\n"
            "__all__ = [\n"
            + "".join(f'    "{n}",\n' for n in sorted(self.names()))
            + "]\n"
        )
        return head + "\n\n" + "\n\n\n".join(self.blocks) + "\n"

    def names(self) -> list[str]:
        out = []
        for block in self.blocks:
            for line in block.splitlines():
                if line.startswith("class "):
                    out.append(line[6:].split(":")[0])
                elif not line.startswith(("#", " ", "@")) and " = " in line:
                    out.append(line.split(" = ")[0])
        return out


def union(types: list[str]) -> str:
    unique = list(dict.fromkeys(types))
    if len(unique) == 1:
        return unique[0]
    if "None" in unique:
        rest = [t for t in unique if t != "None"]
        inner = rest[0] if len(rest) == 1 else f"Union[{', '.join(rest)}]"
        return f"Optional[{inner}]"
    return f"Union[{', '.join(unique)}]"


def variant(schema: dict, index: int) -> str:
    """The suffix naming a oneOf member: its `type` tag, else its index."""
    tag = schema.get("properties", {}).get("type", {}).get("enum", [])
    return camel(str(tag[0])) if len(tag) == 1 else str(index)


def camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def docstring(text: str, indent: str) -> str:
    text = text.strip().replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    lines = text.splitlines()
    if len(lines) == 1:
        return f'{indent}"""{lines[0]}"""'
    body = "\n".join(f"{indent}{line}" if line else "" for line in lines)
    return f'{indent}"""\n{body}\n{indent}"""'


def main() -> int:
    text = Generator(json.loads(OPENAPI.read_text())).generate()
    if "--check" in sys.argv:
        current = OUT.read_text() if OUT.exists() else ""
        if current != text:
            print(
                "forge_sdk/types.py differs from what sdk/openapi.json generates; "
                "run python3 scripts/gen_types.py in sdk/python",
                file=sys.stderr,
            )
            return 1
        print("forge_sdk/types.py matches sdk/openapi.json")
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
