#!/usr/bin/env python3
"""Derives the OpenAPI 3.1 variant of GitHub's REST description from the 3.0.3 one.

The npm package @octokit/openapi ships only the 3.0.3 document; this does what a 3.1
description says differently, nothing else:

- `openapi: 3.0.3` becomes `3.1.0`;
- `nullable: true` on a schema with a `type` becomes a type list with "null" (and a
  null in its `enum`); without a `type`, the schema becomes
  `anyOf: [<the schema without nullable>, {type: "null"}]`; `nullable: false` is dropped;
- boolean `exclusiveMinimum`/`exclusiveMaximum` become the numeric bound (3.1 is JSON
  Schema 2020-12).

Usage: python3 to_3_1.py api.github.com-3.0.json > api.github.com-3.1.json
"""

import json
import sys


def schema(node):
    if isinstance(node, list):
        return [schema(x) for x in node]
    if not isinstance(node, dict):
        return node
    node = {k: schema(v) for k, v in node.items()}
    for flag, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(flag), bool):
            if node[flag] and bound in node:
                node[flag] = node.pop(bound)
            else:
                del node[flag]
    if isinstance(node.get("nullable"), bool):
        nullable = node.pop("nullable")
        if nullable is True:
            t = node.get("type")
            if isinstance(t, str):
                if t != "null":
                    node["type"] = [t, "null"]
                if isinstance(node.get("enum"), list) and None not in node["enum"]:
                    node["enum"].append(None)
            elif isinstance(t, list):
                if "null" not in t:
                    t.append("null")
                if isinstance(node.get("enum"), list) and None not in node["enum"]:
                    node["enum"].append(None)
            else:
                node = {"anyOf": [node, {"type": "null"}]}
    return node


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        doc = json.load(f)
    assert doc["openapi"].startswith("3.0."), doc["openapi"]
    doc = schema(doc)
    doc["openapi"] = "3.1.0"
    json.dump(doc, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
