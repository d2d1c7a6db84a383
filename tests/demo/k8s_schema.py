"""Hand-written, minimal JSON Schemas (draft 2020-12) for the Kubernetes kinds under
deploy/kubernetes/. They are structural: the fields we use, their types, and
``additionalProperties: false`` where a typo would otherwise be silently ignored by the API
server (container and pod fields, probes, metadata). They are not the full OpenAPI schemas
(kubeconform needs a network download of those; no network at test time), so a field these
schemas do not know fails the test: add it here when you add it to a manifest.
"""
from __future__ import annotations

from typing import Any

STR = {"type": "string"}
INT = {"type": "integer"}
BOOL = {"type": "boolean"}
STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
DNS_LABEL = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
DNS_SUBDOMAIN = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253}
QUANTITY = {"oneOf": [{"type": "integer", "minimum": 0},
                      {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$"}]}
PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
INT_OR_PERCENT = {"oneOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": r"^[0-9]+%$"}]}
PORT_REF = {"oneOf": [PORT, {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 15}]}


def obj(props: dict[str, Any], required: list[str] | None = None, extra: bool = False) -> dict[str, Any]:
    s: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": extra}
    if required:
        s["required"] = required
    return s


LABELS = {"type": "object", "propertyNames": {"pattern": r"^([a-z0-9.-]+/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"},
          "additionalProperties": {"type": "string", "maxLength": 63}}
METADATA = obj({"name": DNS_SUBDOMAIN, "namespace": DNS_LABEL, "labels": LABELS, "annotations": STR_MAP}, ["name"])
TEMPLATE_METADATA = obj({"labels": LABELS, "annotations": STR_MAP})
LABEL_SELECTOR = obj({"matchLabels": LABELS, "matchExpressions": {"type": "array"}})

PROBE = {**obj({
    "httpGet": obj({"path": {"type": "string", "pattern": "^/"}, "port": PORT_REF, "scheme": {"enum": ["HTTP", "HTTPS"]}},
                   ["port"]),
    "tcpSocket": obj({"port": PORT_REF}, ["port"]),
    "exec": obj({"command": {"type": "array", "items": STR}}, ["command"]),
    "initialDelaySeconds": INT, "periodSeconds": INT, "timeoutSeconds": INT,
    "failureThreshold": INT, "successThreshold": INT,
}), "oneOf": [{"required": ["httpGet"]}, {"required": ["tcpSocket"]}, {"required": ["exec"]}]}

ENV_VAR = {**obj({
    "name": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
    "value": STR,
    "valueFrom": obj({
        "secretKeyRef": obj({"name": DNS_SUBDOMAIN, "key": STR, "optional": BOOL}, ["name", "key"]),
        "configMapKeyRef": obj({"name": DNS_SUBDOMAIN, "key": STR, "optional": BOOL}, ["name", "key"]),
        "fieldRef": obj({"fieldPath": STR, "apiVersion": STR}, ["fieldPath"]),
    }),
}, ["name"]), "not": {"required": ["value", "valueFrom"]}}

SECURITY_CONTEXT = obj({"allowPrivilegeEscalation": BOOL, "readOnlyRootFilesystem": BOOL, "runAsNonRoot": BOOL,
                        "runAsUser": INT, "runAsGroup": INT, "privileged": BOOL,
                        "capabilities": obj({"drop": {"type": "array", "items": STR}, "add": {"type": "array", "items": STR}})})
POD_SECURITY_CONTEXT = obj({"runAsNonRoot": BOOL, "runAsUser": INT, "runAsGroup": INT, "fsGroup": INT,
                            "seccompProfile": obj({"type": {"enum": ["RuntimeDefault", "Localhost", "Unconfined"]},
                                                   "localhostProfile": STR}, ["type"])})
RESOURCE_MAP = {"type": "object", "additionalProperties": QUANTITY,
                "propertyNames": {"enum": ["cpu", "memory", "ephemeral-storage", "nvidia.com/gpu"]}}

CONTAINER = obj({
    "name": DNS_LABEL,
    "image": {"type": "string", "minLength": 1},
    "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
    "command": {"type": "array", "items": STR},
    "args": {"type": "array", "items": STR},
    "workingDir": STR,
    "ports": {"type": "array", "items": obj({"name": {**DNS_LABEL, "maxLength": 15}, "containerPort": PORT,
                                             "protocol": {"enum": ["TCP", "UDP", "SCTP"]}}, ["containerPort"])},
    "env": {"type": "array", "items": ENV_VAR},
    "envFrom": {"type": "array", "items": obj({"secretRef": obj({"name": DNS_SUBDOMAIN}, ["name"]),
                                               "configMapRef": obj({"name": DNS_SUBDOMAIN}, ["name"])})},
    "resources": obj({"requests": RESOURCE_MAP, "limits": RESOURCE_MAP}),
    "startupProbe": PROBE, "readinessProbe": PROBE, "livenessProbe": PROBE,
    "securityContext": SECURITY_CONTEXT,
    "volumeMounts": {"type": "array", "items": obj({"name": DNS_LABEL, "mountPath": {"type": "string", "pattern": "^/"},
                                                    "readOnly": BOOL, "subPath": STR}, ["name", "mountPath"])},
}, ["name", "image"])

VOLUME = {**obj({
    "name": DNS_LABEL,
    "persistentVolumeClaim": obj({"claimName": DNS_SUBDOMAIN, "readOnly": BOOL}, ["claimName"]),
    "secret": obj({"secretName": DNS_SUBDOMAIN, "defaultMode": INT, "optional": BOOL,
                   "items": {"type": "array", "items": obj({"key": STR, "path": STR, "mode": INT}, ["key", "path"])}},
                  ["secretName"]),
    "configMap": obj({"name": DNS_SUBDOMAIN, "defaultMode": INT, "optional": BOOL,
                      "items": {"type": "array", "items": obj({"key": STR, "path": STR}, ["key", "path"])}}, ["name"]),
    "emptyDir": obj({"medium": STR, "sizeLimit": QUANTITY}),
}, ["name"]), "minProperties": 2, "maxProperties": 2}

POD_SPEC = obj({
    "containers": {"type": "array", "minItems": 1, "items": CONTAINER},
    "initContainers": {"type": "array", "items": CONTAINER},
    "volumes": {"type": "array", "items": VOLUME},
    "securityContext": POD_SECURITY_CONTEXT,
    "nodeSelector": STR_MAP,
    "tolerations": {"type": "array", "items": obj({"key": STR, "operator": {"enum": ["Exists", "Equal"]}, "value": STR,
                                                   "effect": {"enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]},
                                                   "tolerationSeconds": INT})},
    "terminationGracePeriodSeconds": INT,
    "restartPolicy": {"enum": ["Always", "OnFailure", "Never"]},
    "serviceAccountName": DNS_SUBDOMAIN,
}, ["containers"])

POD_TEMPLATE = obj({"metadata": TEMPLATE_METADATA, "spec": POD_SPEC}, ["metadata", "spec"])


def kind(api: str, k: str, spec: dict[str, Any] | None = None, *, data: bool = False, top: dict | None = None) -> dict:
    props: dict[str, Any] = {"apiVersion": {"const": api}, "kind": {"const": k}, "metadata": METADATA}
    required = ["apiVersion", "kind", "metadata"]
    if spec is not None:
        props["spec"] = spec
        required.append("spec")
    if data:
        props["data"] = STR_MAP
        required.append("data")
    props.update(top or {})
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **obj(props, required)}


SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("v1", "Namespace"): kind("v1", "Namespace"),
    ("v1", "ConfigMap"): kind("v1", "ConfigMap", data=True),
    ("v1", "PersistentVolumeClaim"): kind("v1", "PersistentVolumeClaim", obj({
        "accessModes": {"type": "array", "minItems": 1,
                        "items": {"enum": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]}},
        "resources": obj({"requests": obj({"storage": QUANTITY}, ["storage"])}, ["requests"]),
        "storageClassName": STR, "volumeMode": {"enum": ["Filesystem", "Block"]},
    }, ["accessModes", "resources"])),
    ("v1", "Service"): kind("v1", "Service", obj({
        "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
        "selector": LABELS,
        "ports": {"type": "array", "minItems": 1, "items": obj({
            "name": DNS_LABEL, "port": PORT, "targetPort": PORT_REF, "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
            "nodePort": PORT}, ["port"])},
    }, ["selector", "ports"])),
    ("apps/v1", "Deployment"): kind("apps/v1", "Deployment", obj({
        "replicas": {"type": "integer", "minimum": 0},
        "revisionHistoryLimit": INT,
        "selector": LABEL_SELECTOR,
        "strategy": obj({"type": {"enum": ["RollingUpdate", "Recreate"]},
                         "rollingUpdate": obj({"maxUnavailable": INT_OR_PERCENT, "maxSurge": INT_OR_PERCENT})}),
        "template": POD_TEMPLATE,
    }, ["selector", "template"])),
    ("batch/v1", "Job"): kind("batch/v1", "Job", obj({
        "backoffLimit": INT, "ttlSecondsAfterFinished": INT, "activeDeadlineSeconds": INT, "template": POD_TEMPLATE,
    }, ["template"])),
    ("batch/v1", "CronJob"): kind("batch/v1", "CronJob", obj({
        "schedule": {"type": "string", "pattern": r"^(\S+\s+){4}\S+$"},
        "timeZone": STR, "suspend": BOOL,
        "concurrencyPolicy": {"enum": ["Allow", "Forbid", "Replace"]},
        "successfulJobsHistoryLimit": INT, "failedJobsHistoryLimit": INT, "startingDeadlineSeconds": INT,
        "jobTemplate": obj({"metadata": TEMPLATE_METADATA, "spec": obj({
            "backoffLimit": INT, "ttlSecondsAfterFinished": INT, "activeDeadlineSeconds": INT,
            "template": POD_TEMPLATE}, ["template"])}, ["spec"]),
    }, ["schedule", "jobTemplate"])),
    ("autoscaling/v2", "HorizontalPodAutoscaler"): kind("autoscaling/v2", "HorizontalPodAutoscaler", obj({
        "scaleTargetRef": obj({"apiVersion": STR, "kind": STR, "name": DNS_SUBDOMAIN}, ["kind", "name"]),
        "minReplicas": {"type": "integer", "minimum": 1},
        "maxReplicas": {"type": "integer", "minimum": 1},
        "metrics": {"type": "array", "minItems": 1, "items": {**obj({
            "type": {"enum": ["Pods", "Resource", "Object", "External", "ContainerResource"]},
            "pods": obj({"metric": obj({"name": STR, "selector": LABEL_SELECTOR}, ["name"]),
                         "target": obj({"type": {"const": "AverageValue"}, "averageValue": QUANTITY},
                                       ["type", "averageValue"])}, ["metric", "target"]),
            "resource": obj({"name": STR, "target": obj({"type": STR, "averageUtilization": INT,
                                                         "averageValue": QUANTITY})}, ["name", "target"]),
        }, ["type"]), "if": {"properties": {"type": {"const": "Pods"}}}, "then": {"required": ["pods"]}}},
        "behavior": obj({d: obj({
            "stabilizationWindowSeconds": INT,
            "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
            "policies": {"type": "array", "items": obj({"type": {"enum": ["Pods", "Percent"]}, "value": INT,
                                                        "periodSeconds": INT}, ["type", "value", "periodSeconds"])},
        }) for d in ("scaleUp", "scaleDown")}),
    }, ["scaleTargetRef", "maxReplicas", "metrics"])),
    ("networking.k8s.io/v1", "NetworkPolicy"): kind("networking.k8s.io/v1", "NetworkPolicy", obj({
        "podSelector": LABEL_SELECTOR,
        "policyTypes": {"type": "array", "items": {"enum": ["Ingress", "Egress"]}},
        "ingress": {"type": "array", "items": obj({
            "from": {"type": "array", "items": {**obj({"podSelector": LABEL_SELECTOR, "namespaceSelector": LABEL_SELECTOR,
                                                       "ipBlock": obj({"cidr": STR, "except": {"type": "array"}}, ["cidr"])}),
                                                "minProperties": 1}},
            "ports": {"type": "array", "items": obj({"protocol": {"enum": ["TCP", "UDP", "SCTP"]}, "port": PORT_REF,
                                                     "endPort": PORT})}})},
        "egress": {"type": "array"},
    }, ["podSelector"])),
    ("networking.k8s.io/v1", "Ingress"): kind("networking.k8s.io/v1", "Ingress", obj({
        "ingressClassName": STR,
        "tls": {"type": "array", "items": obj({"hosts": {"type": "array", "items": DNS_SUBDOMAIN},
                                               "secretName": DNS_SUBDOMAIN})},
        "rules": {"type": "array", "minItems": 1, "items": obj({
            "host": DNS_SUBDOMAIN,
            "http": obj({"paths": {"type": "array", "minItems": 1, "items": obj({
                "path": {"type": "string", "pattern": "^/"},
                "pathType": {"enum": ["Prefix", "Exact", "ImplementationSpecific"]},
                "backend": obj({"service": obj({"name": DNS_LABEL, "port": {
                    **obj({"name": DNS_LABEL, "number": PORT}), "minProperties": 1, "maxProperties": 1}},
                    ["name", "port"])}, ["service"]),
            }, ["path", "pathType", "backend"])}}, ["paths"]),
        })},
    }, ["rules"])),
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"): {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **obj({"apiVersion": {"const": "kustomize.config.k8s.io/v1beta1"}, "kind": {"const": "Kustomization"},
               "resources": {"type": "array", "items": STR, "minItems": 1}, "namespace": DNS_LABEL,
               "images": {"type": "array", "items": obj({"name": STR, "newName": STR, "newTag": STR}, ["name"])}},
              ["apiVersion", "kind", "resources"])},
}
