"""A JSON schema of the KubeRay ``ray.io/v1`` fields our manifests use, written from KubeRay's
documented API types (ray-operator/apis/ray/v1: RayClusterSpec, HeadGroupSpec, WorkerGroupSpec,
RayJobSpec): required fields, their types and the values the operator accepts. Unknown fields
are refused, as the API server's structural schema would prune or reject them. Pod templates
are checked separately against Kubernetes' own schema (kubernetes-validate)."""

from __future__ import annotations

_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_TEMPLATE = {"type": "object", "required": ["spec"],
             "properties": {"metadata": {"type": "object"}, "spec": {"type": "object"}},
             "additionalProperties": False}
_METADATA = {"type": "object", "required": ["name"],
             "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                                     "maxLength": 63},
                            "namespace": {"type": "string"}, "labels": _STR_MAP,
                            "annotations": _STR_MAP}}

HEAD_GROUP = {
    "type": "object", "required": ["rayStartParams", "template"], "additionalProperties": False,
    "properties": {
        "rayStartParams": _STR_MAP,   # map[string]string: every value a string
        "template": _TEMPLATE,
        "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
        "enableIngress": {"type": "boolean"},
        "headService": {"type": "object"},
    },
}
WORKER_GROUP = {
    "type": "object", "required": ["groupName", "rayStartParams", "template", "maxReplicas"],
    "additionalProperties": False,
    "properties": {
        "groupName": {"type": "string", "minLength": 1},
        "replicas": {"type": "integer", "minimum": 0},
        "minReplicas": {"type": "integer", "minimum": 0},
        "maxReplicas": {"type": "integer", "minimum": 0},
        "numOfHosts": {"type": "integer", "minimum": 1},
        "rayStartParams": _STR_MAP,
        "template": _TEMPLATE,
        "scaleStrategy": {"type": "object"},
        "suspend": {"type": "boolean"},
        "idleTimeoutSeconds": {"type": "integer"},
    },
}
CLUSTER_SPEC = {
    "type": "object", "required": ["headGroupSpec"], "additionalProperties": False,
    "properties": {
        "rayVersion": {"type": "string"},
        "enableInTreeAutoscaling": {"type": "boolean"},
        "autoscalerOptions": {"type": "object"},
        "headGroupSpec": HEAD_GROUP,
        "workerGroupSpecs": {"type": "array", "items": WORKER_GROUP},
        "headServiceAnnotations": _STR_MAP,
        "suspend": {"type": "boolean"},
        "managedBy": {"type": "string"},
        "gcsFaultToleranceOptions": {"type": "object"},
    },
}
RAY_CLUSTER = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {"apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayCluster"},
                   "metadata": _METADATA, "spec": CLUSTER_SPEC},
}
RAY_JOB = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayJob"},
        "metadata": _METADATA,
        "spec": {
            "type": "object", "required": ["entrypoint"], "additionalProperties": False,
            # exactly one way to get a cluster: create one, or select a running one
            "oneOf": [{"required": ["rayClusterSpec"]}, {"required": ["clusterSelector"]}],
            "properties": {
                "entrypoint": {"type": "string", "minLength": 1},
                "runtimeEnvYAML": {"type": "string"},
                "rayClusterSpec": CLUSTER_SPEC,
                "clusterSelector": {**_STR_MAP, "minProperties": 1},
                "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode",
                                            "SidecarMode"]},
                "shutdownAfterJobFinishes": {"type": "boolean"},
                "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                "backoffLimit": {"type": "integer", "minimum": 0},
                "jobId": {"type": "string"},
                "metadata": _STR_MAP,
                "entrypointNumCpus": {"type": "number"},
                "entrypointNumGpus": {"type": "number"},
                "entrypointResources": {"type": "string"},
                "submitterPodTemplate": _TEMPLATE,
                "suspend": {"type": "boolean"},
                "deletionStrategy": {"type": "object"},
                "managedBy": {"type": "string"},
            },
        },
    },
}
SCHEMAS = {"RayCluster": RAY_CLUSTER, "RayJob": RAY_JOB}
