#!/usr/bin/env python3
"""Validates rendered Kubernetes manifests offline.

Built-in kinds (and the CRD itself) are checked strictly by kubernetes-validate against the
Kubernetes version the operator targets; Constellations are checked against the CRD's own
openAPIV3Schema, closed to unknown fields as `kubectl apply --validate=strict` would be.
Prometheus Operator kinds have no schema here and are only checked for identity.

usage: validate-manifests.py --crd crds/constellation.yaml FILE...
"""
import argparse
import copy
import sys

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.33.0"
UNSCHEMED_GROUPS = ("monitoring.coreos.com/",)


def closed(schema):
    schema = copy.deepcopy(schema)

    def close(node):
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(schema)
    return schema


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--crd", required=True)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    with open(args.crd) as f:
        crd = yaml.safe_load(f)
    schema = closed(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    # apiVersion, kind and metadata are the API server's, not described in the CRD.
    schema["properties"]["apiVersion"] = {"const": f"{crd['spec']['group']}/{crd['spec']['versions'][0]['name']}"}
    schema["properties"]["kind"] = {"const": crd["spec"]["names"]["kind"]}
    schema["properties"]["metadata"] = {"type": "object"}
    failures = 0
    checked = 0
    for path in args.files:
        with open(path) as f:
            documents = [d for d in yaml.safe_load_all(f) if d]
        for document in documents:
            identity = f"{path}: {document.get('kind')} {document.get('metadata', {}).get('name')}"
            try:
                if not document.get("apiVersion") or not document.get("kind") or not document.get("metadata", {}).get("name"):
                    raise ValueError("apiVersion, kind and metadata.name are required")
                if document["kind"] == "Constellation":
                    jsonschema.validate(document, schema)
                elif document["apiVersion"].startswith(UNSCHEMED_GROUPS):
                    pass
                else:
                    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
                checked += 1
            except Exception as error:  # every failure is reported, then the run fails
                failures += 1
                message = getattr(error, "message", str(error))
                print(f"INVALID {identity}: {message}", file=sys.stderr)
    print(f"validated {checked} manifests, {failures} invalid")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
