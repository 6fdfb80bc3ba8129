#!/usr/bin/env python3
"""Validates deploy/: every YAML document against a strict JSON schema of the
Kubernetes fields these manifests use (written for this project from the
apps/v1 DaemonSet, v1 ConfigMap and node.k8s.io/v1 RuntimeClass API
reference: unknown fields are errors, so a typo such as `mountPropogation`
fails), plus the checks a schema cannot express: the host mounts the daemon
needs, the Prometheus annotations matching the metrics port, and every TOML
file (containerd drop-ins, the ConfigMap's config.toml) parsing.

Not the upstream OpenAPI schemas (kubeconform and its schema repository are
not installable here): a field outside this subset is reported as unknown
even when Kubernetes has it; extend the schema when adding one.
"""
import json
import pathlib
import sys
import tomllib

import jsonschema
import yaml

S = {"type": "string"}
I = {"type": "integer"}
B = {"type": "boolean"}


def obj(props, required=()):
    return {"type": "object", "properties": props, "required": list(required),
            "additionalProperties": False}


def amap(values=S):
    return {"type": "object", "additionalProperties": values}


def arr(item):
    return {"type": "array", "items": item}


META = obj({"name": S, "namespace": S, "labels": amap(), "annotations": amap()}, ["name"])
PROBE = obj({"httpGet": obj({"path": S, "port": {"type": ["integer", "string"]}}, ["port"]),
             "initialDelaySeconds": I, "periodSeconds": I, "timeoutSeconds": I,
             "failureThreshold": I})
CONTAINER = obj({
    "name": S, "image": S,
    "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
    "command": arr(S), "args": arr(S),
    "env": arr(obj({"name": S, "value": S}, ["name"])),
    "securityContext": obj({"privileged": B}),
    "ports": arr(obj({"name": S, "containerPort": I,
                      "protocol": {"enum": ["TCP", "UDP", "SCTP"]}}, ["containerPort"])),
    "readinessProbe": PROBE, "livenessProbe": PROBE,
    "resources": obj({"requests": amap({"type": ["string", "integer"]}),
                      "limits": amap({"type": ["string", "integer"]})}),
    "volumeMounts": arr(obj({"name": S, "mountPath": S, "readOnly": B,
                             "mountPropagation": {"enum": ["None", "HostToContainer",
                                                           "Bidirectional"]}},
                            ["name", "mountPath"])),
}, ["name", "image"])
HOSTPATH_TYPES = ["", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket",
                  "CharDevice", "BlockDevice"]
VOLUME = obj({"name": S,
              "configMap": obj({"name": S}, ["name"]),
              "hostPath": obj({"path": S, "type": {"enum": HOSTPATH_TYPES}}, ["path"])},
             ["name"])
POD_SPEC = obj({
    "hostNetwork": B,
    "dnsPolicy": {"enum": ["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"]},
    "priorityClassName": S, "terminationGracePeriodSeconds": I, "runtimeClassName": S,
    "tolerations": arr(obj({"operator": {"enum": ["Exists", "Equal"]}, "key": S, "value": S,
                            "effect": S})),
    "containers": {**arr(CONTAINER), "minItems": 1},
    "volumes": arr(VOLUME),
}, ["containers"])
SCHEMAS = {
    ("apps/v1", "DaemonSet"): obj({
        "apiVersion": S, "kind": S, "metadata": META,
        "spec": obj({
            "selector": obj({"matchLabels": amap()}, ["matchLabels"]),
            "updateStrategy": obj({"type": {"enum": ["RollingUpdate", "OnDelete"]},
                                   "rollingUpdate": obj({"maxUnavailable":
                                                         {"type": ["integer", "string"]}})}),
            "template": obj({"metadata": obj({"labels": amap(), "annotations": amap()}),
                             "spec": POD_SPEC}, ["spec"]),
        }, ["selector", "template"]),
    }, ["apiVersion", "kind", "metadata", "spec"]),
    ("v1", "ConfigMap"): obj({"apiVersion": S, "kind": S, "metadata": META, "data": amap()},
                             ["apiVersion", "kind", "metadata"]),
    ("node.k8s.io/v1", "RuntimeClass"): obj({"apiVersion": S, "kind": S, "metadata": META,
                                             "handler": S},
                                            ["apiVersion", "kind", "metadata", "handler"]),
}
NEEDED_HOST_PATHS = {"/dev/fuse", "/var/lib/containerd/io.containerd.snapshotter.v1.hologram",
                     "/run/hologram-snapshotter", "/etc/containerd"}


def check_daemonset(ds, errors):
    tpl = ds["spec"]["template"]
    labels = tpl.get("metadata", {}).get("labels", {})
    for k, v in ds["spec"]["selector"]["matchLabels"].items():
        if labels.get(k) != v:
            errors.append(f"selector {k}={v} does not match the pod template's labels")
    spec = tpl["spec"]
    paths = {v["hostPath"]["path"] for v in spec.get("volumes", []) if "hostPath" in v}
    for p in sorted(NEEDED_HOST_PATHS - paths):
        errors.append(f"DaemonSet lacks the host mount {p}")
    names = {v["name"] for v in spec.get("volumes", [])}
    c = spec["containers"][0]
    for m in c.get("volumeMounts", []):
        if m["name"] not in names:
            errors.append(f"volumeMount {m['name']} has no volume")
        if m["mountPath"].endswith("snapshotter.v1.hologram") and \
                m.get("mountPropagation") != "Bidirectional":
            errors.append("the root must be mounted with mountPropagation: Bidirectional")
    ann = tpl.get("metadata", {}).get("annotations", {})
    ports = {str(p["containerPort"]) for p in c.get("ports", [])}
    if ann.get("prometheus.io/scrape") != "true" or ann.get("prometheus.io/port") not in ports:
        errors.append("prometheus.io/scrape and prometheus.io/port must name a container port")


def main(root):
    errors = []
    for f in sorted(root.glob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(f.read_text())):
            if doc is None:
                continue
            where = f"{f.name}[{i}]"
            schema = SCHEMAS.get((doc.get("apiVersion"), doc.get("kind")))
            if schema is None:
                errors.append(f"{where}: no schema for {doc.get('apiVersion')} {doc.get('kind')}")
                continue
            for e in jsonschema.Draft7Validator(schema).iter_errors(doc):
                path = "/".join(str(p) for p in e.absolute_path)
                errors.append(f"{where}: {path}: {e.message}")
            if doc["kind"] == "DaemonSet" and not errors:
                check_daemonset(doc, errors)
            if doc["kind"] == "ConfigMap":
                for key, text in doc.get("data", {}).items():
                    if key.endswith(".toml"):
                        try:
                            tomllib.loads(text)
                        except tomllib.TOMLDecodeError as e:
                            errors.append(f"{where}: data.{key}: {e}")
    for f in sorted(root.glob("*.toml")):
        try:
            cfg = tomllib.loads(f.read_text())
        except tomllib.TOMLDecodeError as e:
            errors.append(f"{f.name}: {e}")
            continue
        if cfg.get("proxy_plugins", {}).get("hologram", {}).get("type") != "snapshot":
            errors.append(f"{f.name}: no [proxy_plugins.hologram] of type snapshot")
    for e in errors:
        print("deploy:", e, file=sys.stderr)
    if not errors:
        print(f"deploy: {root} valid")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "deploy")))
