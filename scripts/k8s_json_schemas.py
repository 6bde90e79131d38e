#!/usr/bin/env python3
"""Kubernetes JSON schemas for kubeconform, made offline from Kubernetes' own OpenAPI spec.

kubeconform ships no schemas: by default it downloads them from GitHub, which this project's
machines cannot reach. Kubernetes publishes its API as OpenAPI v2 in its source tree
(``api/openapi-spec/swagger.json``), and the Go module proxy serves that tree as the module
``k8s.io/kubernetes``. This script asks ``go mod download`` for it and writes one JSON schema per
kind in the layout kubeconform reads (``-schema-location DIR``)::

    DIR/v1.35.4-standalone/deployment-apps-v1.json          what the API server accepts
    DIR/v1.35.4-standalone-strict/deployment-apps-v1.json   the same, unknown fields refused (-strict)

It does what kubeconform's schemas (made by openapi2jsonschema) do, written here from that
description:

* one file per ``x-kubernetes-group-version-kind``, named ``<kind>-<group's first label>-<version>``
  (core kinds: ``<kind>-<version>``);
* "standalone": each file carries the definitions it refers to (``#/definitions/...``), so no file
  refers to another and recursive types (JSONSchemaProps) stay finite;
* ``int-or-string`` fields accept a string or an integer, quantities a string or a number, as the
  API server does (``port: 8080``, ``cpu: 1``); optional fields accept null (``annotations:``);
* strict: ``additionalProperties: false`` on every object that lists its properties, so a
  misspelt field (``replica: 3``) is an error rather than silently dropped.

Usage: scripts/k8s_json_schemas.py --kubernetes-version 1.35.4 --out .chipq/tools/k8s-schemas
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"


def download_spec(kubernetes_version: str) -> Path:
    """``api/openapi-spec/swagger.json`` of k8s.io/kubernetes at that version, from the Go module proxy."""
    module = f"k8s.io/kubernetes@v{kubernetes_version}"
    result = subprocess.run(["go", "mod", "download", "-json", module], capture_output=True, text=True, check=False)
    info = json.loads(result.stdout or "{}")
    if result.returncode != 0 or "Dir" not in info:
        sys.exit(f"go mod download {module} failed: {info.get('Error') or result.stderr.strip()}")
    return Path(info["Dir"]) / "api" / "openapi-spec" / "swagger.json"


def _referenced(schema: Any, definitions: dict[str, Any], found: set[str]) -> None:
    """Add to ``found`` every definition ``schema`` refers to, transitively."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/definitions/"):
            name = ref.removeprefix("#/definitions/")
            if name not in found:
                found.add(name)
                _referenced(definitions[name], definitions, found)
        for value in schema.values():
            _referenced(value, definitions, found)
    elif isinstance(schema, list):
        for value in schema:
            _referenced(value, definitions, found)


def _as_api_server_reads(schema: Any) -> Any:
    """int-or-string, quantities and optional nulls as the API server accepts them (see the module doc)."""
    if isinstance(schema, list):
        return [_as_api_server_reads(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if schema.get("format") == "int-or-string":
        return {"oneOf": [{"type": "string"}, {"type": "integer"}], "description": schema.get("description", "")}
    out = {key: _as_api_server_reads(value) for key, value in schema.items()}
    required = set(schema.get("required", []))
    for name, prop in out.get("properties", {}).items():
        if name not in required and isinstance(prop.get("type"), str):
            prop["type"] = [prop["type"], "null"]
    return out


def _strict(schema: Any) -> Any:
    """``additionalProperties: false`` wherever an object lists its properties."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def kind_schemas(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """File name -> standalone JSON schema, for every kind the spec declares."""
    definitions = copy.deepcopy(spec["definitions"])
    if QUANTITY in definitions:
        description = definitions[QUANTITY].get("description", "")
        definitions[QUANTITY] = {"oneOf": [{"type": "string"}, {"type": "number"}], "description": description}
    schemas: dict[str, dict[str, Any]] = {}
    for definition in definitions.values():
        for gvk in definition.get("x-kubernetes-group-version-kind", []):
            group = gvk["group"].split(".")[0]
            file_name = "-".join(part for part in (gvk["kind"], group, gvk["version"]) if part).lower() + ".json"
            needed: set[str] = set()  # the kind itself too, should it refer to itself
            _referenced(definition, definitions, needed)
            schema = {key: value for key, value in definition.items() if key != "x-kubernetes-group-version-kind"}
            schema["$schema"] = "http://json-schema.org/draft-07/schema#"
            if needed:
                schema["definitions"] = {ref: definitions[ref] for ref in sorted(needed)}
            schemas.setdefault(file_name, schema)
    return schemas


def write(spec_path: Path, out: Path, kubernetes_version: str) -> int:
    spec = json.loads(spec_path.read_text())
    schemas = kind_schemas(spec)
    for suffix, transform in (("", _as_api_server_reads), ("-strict", lambda s: _strict(_as_api_server_reads(s)))):
        folder = out / f"v{kubernetes_version}-standalone{suffix}"
        folder.mkdir(parents=True, exist_ok=True)
        for file_name, schema in schemas.items():
            (folder / file_name).write_text(json.dumps(transform(schema), indent=1, sort_keys=True))
    (out / f"v{kubernetes_version}.source").write_text(
        f"k8s.io/kubernetes v{kubernetes_version} api/openapi-spec/swagger.json ({spec['info']['version']})\n"
    )
    return len(schemas)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubernetes-version", required=True, help="e.g. 1.35.4 (a k8s.io/kubernetes module version)")
    parser.add_argument("--out", type=Path, required=True, help="kubeconform's -schema-location folder")
    parser.add_argument("--spec", type=Path, default=None, help="a swagger.json to read instead of downloading")
    args = parser.parse_args()
    spec = args.spec or download_spec(args.kubernetes_version)
    count = write(spec, args.out, args.kubernetes_version)
    print(f"{count} Kubernetes v{args.kubernetes_version} schemas (standalone and strict) in {args.out}")


if __name__ == "__main__":
    main()
