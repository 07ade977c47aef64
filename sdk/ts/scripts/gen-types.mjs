#!/usr/bin/env node
// Writes src/types.d.ts from the forge's OpenAPI document: one TypeScript
// type per schema, so the SDK's types follow the server's.
//
//   node scripts/gen-types.mjs           write src/types.d.ts
//   node scripts/gen-types.mjs --check   exit 1 when it differs from the file

import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";

const here = dirname(fileURLToPath(import.meta.url));
const openapiPath = join(here, "..", "..", "openapi.json");
const outPath = join(here, "..", "src", "types.d.ts");

/** The TypeScript type of one JSON Schema. */
export function typeOf(schema, indent = "") {
  const shaped = ["$ref", "enum", "oneOf", "anyOf", "allOf", "type", "properties"];
  if (schema === true || schema === undefined || !shaped.some((k) => k in schema)) {
    return "unknown";
  }
  if (schema.$ref) {
    return schema.$ref.split("/").pop();
  }
  if (schema.enum) {
    return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  }
  if (schema.oneOf || schema.anyOf) {
    return (schema.oneOf ?? schema.anyOf).map((s) => wrap(typeOf(s, indent))).join(" | ");
  }
  if (schema.allOf) {
    return schema.allOf.map((s) => wrap(typeOf(s, indent))).join(" & ");
  }
  const types = Array.isArray(schema.type) ? schema.type : [schema.type];
  return types.map((t) => single(t, schema, indent)).join(" | ");
}

function wrap(t) {
  if (t.startsWith("{")) {
    return t;
  }
  return t.includes(" | ") || t.includes(" & ") ? `(${t})` : t;
}

function single(type, schema, indent) {
  switch (type) {
    case "null":
      return "null";
    case "string":
      return "string";
    case "integer":
    case "number":
      return "number";
    case "boolean":
      return "boolean";
    case "array":
      return `${wrap(typeOf(schema.items ?? {}, indent))}[]`;
    case "object":
    case undefined:
      return objectType(schema, indent);
    default:
      throw new Error(`unknown schema type ${type}`);
  }
}

function objectType(schema, indent) {
  const props = schema.properties ?? {};
  const required = new Set(schema.required ?? []);
  const names = Object.keys(props);
  if (names.length === 0) {
    if (schema.additionalProperties && schema.additionalProperties !== true) {
      return `Record<string, ${typeOf(schema.additionalProperties, indent)}>`;
    }
    return schema.additionalProperties === false ? "Record<string, never>" : "Record<string, unknown>";
  }
  const inner = indent + "  ";
  const lines = names.map((name) => {
    const prop = props[name];
    const doc = prop.description ? docComment(prop.description, inner) : "";
    const key = /^[A-Za-z_$][\w$]*$/.test(name) ? name : JSON.stringify(name);
    const optional = required.has(name) ? "" : "?";
    return `${doc}${inner}${key}${optional}: ${typeOf(prop, inner)};`;
  });
  return `{\n${lines.join("\n")}\n${indent}}`;
}

function docComment(text, indent) {
  const lines = text.trim().split("\n");
  if (lines.length === 1) {
    return `${indent}/** ${lines[0]} */\n`;
  }
  return `${indent}/**\n${lines.map((l) => `${indent} *${l ? " " + l : ""}`).join("\n")}\n${indent} */\n`;
}

/** The whole types file for an OpenAPI document. */
export function generate(doc) {
  const out = [
    "// The forge API's types, generated from sdk/openapi.json by",
    "// scripts/gen-types.mjs. Do not edit: run `npm run gen` instead.",
    "",
  ];
  const schemas = doc.components?.schemas ?? {};
  for (const name of Object.keys(schemas).sort()) {
    const schema = schemas[name];
    if (schema.description) {
      out.push(docComment(schema.description, "").trimEnd());
    }
    const type = typeOf(schema);
    if (type.startsWith("{") && !schema.allOf && !schema.oneOf) {
      out.push(`export interface ${name} ${type}`);
    } else {
      out.push(`export type ${name} = ${type};`);
    }
    out.push("");
  }
  return out.join("\n");
}

const isMain = process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1];
if (isMain) {
  const text = generate(JSON.parse(readFileSync(openapiPath, "utf8")));
  if (process.argv.includes("--check")) {
    let current = "";
    try {
      current = readFileSync(outPath, "utf8");
    } catch {}
    if (current !== text) {
      console.error(
        "src/types.d.ts differs from what sdk/openapi.json generates; run `npm run gen` in sdk/ts",
      );
      process.exit(1);
    }
    console.log("src/types.d.ts matches sdk/openapi.json");
  } else {
    writeFileSync(outPath, text);
    console.log(`wrote ${outPath}`);
  }
}
