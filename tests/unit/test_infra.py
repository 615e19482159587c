"""The cluster configs under infra/ pass their tools' own validation offline and keep the
security properties the README promises (token auth on every node, no dashboard or SSH open to
the internet, no credentials in files, explicit images, installs that do not reach for Ray's
nightly wheels)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
AWS = ROOT / "infra" / "ray" / "aws.yaml"


@pytest.fixture(scope="module")
def aws():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(AWS.read_text())
    cfg = prepare_config(yaml.safe_load(AWS.read_text()))
    validate_config(cfg)  # Ray's own schema; no AWS call
    return raw, cfg


def test_node_types_are_a_cpu_head_gpu_training_and_cpu_decoding_groups(aws):
    raw, cfg = aws
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] == "head" and types["head"]["resources"] == {"CPU": 0}
    assert types["gpu-train"]["node_config"]["InstanceType"].startswith(("p", "g"))
    assert types["cpu-decode"]["node_config"]["InstanceType"].startswith(("c", "m"))
    for name in ("gpu-train", "cpu-decode"):
        assert 0 <= types[name]["min_workers"] < types[name]["max_workers"] <= raw["max_workers"]
    for name, t in types.items():
        nc = t["node_config"]
        assert re.fullmatch(r"ami-[0-9a-f]{8,17}", nc["ImageId"]), name  # explicit image
        assert nc["IamInstanceProfile"]["Name"].startswith("arinv-ray-"), name  # S3 by role


def test_token_auth_on_every_node_and_dashboard_on_loopback(aws):
    _, cfg = aws
    mounts = cfg["file_mounts"]
    assert mounts["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(cfg[key])
        assert "export RAY_AUTH_MODE=token;" in start, key
        assert "0.0.0.0" not in start, key
    assert "--dashboard-host=127.0.0.1" in " ".join(cfg["head_start_ray_commands"])


def test_security_group_opens_only_ssh_and_not_to_the_world(aws):
    _, cfg = aws
    perms = cfg["provider"]["security_group"]["IpPermissions"]
    assert [(p["FromPort"], p["ToPort"]) for p in perms] == [(22, 22)]
    cidrs = [r["CidrIp"] for p in perms for r in p["IpRanges"]]
    assert cidrs and "0.0.0.0/0" not in cidrs


def test_setup_installs_this_project_not_rays_defaults(aws):
    _, cfg = aws
    setup = " ".join(cfg["setup_commands"])
    assert "infra/local/run.sh setup" in setup and "RAY_AUTH_MODE=token" in setup
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert "nightly" not in " ".join(cfg[key]) and "pip install boto3" not in " ".join(
            cfg[key]), key


def test_no_credentials_in_infra_files():
    secret = re.compile(r"(aws_secret_access_key|aws_access_key_id|AKIA[0-9A-Z]{16}|password:"
                        r"\s*\S+|MLFLOW_TRACKING_PASSWORD:\s*\S+)", re.I)
    for path in (ROOT / "infra").rglob("*.yaml"):
        assert not secret.search(path.read_text()), path


def test_a_misspelt_key_fails_rays_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load(AWS.read_text())
    cfg["available_node_types"]["gpu-train"]["max_worker"] = 8
    with pytest.raises(Exception, match="Additional properties"):
        validate_config(prepare_config(cfg))


# ----------------------------------------------------------------------------- Kubernetes

K8S = ROOT / "infra" / "k8s"
K8S_VERSION = "1.30"


def _docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())
            if d]


def _pod_templates(spec: dict) -> list[dict]:
    out = [spec["headGroupSpec"]["template"]]
    return out + [g["template"] for g in spec.get("workerGroupSpecs", [])]


def _check_pod_template(template: dict, where: str) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
               "template": template}
    try:
        kv.validate(wrapped, K8S_VERSION, strict=True)
    except kv.ValidationError as e:
        raise AssertionError(f"{where}: {e}") from None


def test_every_manifest_passes_its_schema():
    import jsonschema
    from kuberay_v1 import SCHEMAS

    kv = pytest.importorskip("kubernetes_validate")
    kinds = []
    for path, doc in _docs():
        kinds.append(doc["kind"])
        where = f"{path.name} {doc['kind']} {doc['metadata']['name']}"
        if doc["apiVersion"] == "ray.io/v1":
            jsonschema.validate(doc, SCHEMAS[doc["kind"]])
            spec = doc["spec"].get("rayClusterSpec") or (
                doc["spec"] if doc["kind"] == "RayCluster" else None)
            for t in _pod_templates(spec) if spec else []:
                _check_pod_template(t, where)
        else:
            try:
                kv.validate(doc, K8S_VERSION, strict=True)
            except kv.ValidationError as e:
                raise AssertionError(f"{where}: {e}") from None
    assert sorted(set(kinds)) == ["Deployment", "Namespace", "RayCluster", "RayJob", "Service",
                                  "ServiceAccount", "StatefulSet"]
    assert kinds.count("RayJob") == 3  # encoder training, generator training, a sweep


def test_the_kuberay_schema_refuses_what_the_operator_would():
    import jsonschema
    from kuberay_v1 import SCHEMAS

    (_, cluster), = [(p, d) for p, d in _docs() if d["kind"] == "RayCluster"]
    bad = yaml.safe_load(yaml.safe_dump(cluster))
    bad["spec"]["workerGroupSpecs"][0]["rayStartParams"] = {"num-gpus": 8}  # not a string
    with pytest.raises(jsonschema.ValidationError, match="is not of type 'string'"):
        jsonschema.validate(bad, SCHEMAS["RayCluster"])
    bad = yaml.safe_load(yaml.safe_dump(cluster))
    bad["apiVersion"] = "ray.io/v1alpha1"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMAS["RayCluster"])
    job = next(d for _, d in _docs() if d["kind"] == "RayJob")
    bad = yaml.safe_load(yaml.safe_dump(job))
    del bad["spec"]["clusterSelector"]  # neither a cluster spec nor a selector
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMAS["RayJob"])
    bad = yaml.safe_load(yaml.safe_dump(job))
    bad["spec"]["submissionMode"] = "Batch"
    with pytest.raises(jsonschema.ValidationError, match="is not one of"):
        jsonschema.validate(bad, SCHEMAS["RayJob"])


def test_gpu_group_token_auth_workload_identity_and_no_public_endpoints():
    docs = [d for _, d in _docs()]
    cluster = next(d for d in docs if d["kind"] == "RayCluster")
    templates = _pod_templates(cluster["spec"])
    gpu = next(g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu-train")
    c = gpu["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["template"]["spec"]["tolerations"])
    for t in templates:
        spec = t["spec"]
        assert spec["serviceAccountName"] == "arinv-ray"  # S3 by workload identity, no keys
        env = {e["name"]: e for e in spec["containers"][0]["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "ray-auth"
        assert "value" not in env["MLFLOW_TRACKING_PASSWORD"]  # from a secret only
    for d in docs:
        if d["kind"] == "Service":
            assert d["spec"].get("type", "ClusterIP") == "ClusterIP", d["metadata"]["name"]
    assert cluster["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"
    for job in (d for d in docs if d["kind"] == "RayJob"):
        assert job["spec"]["clusterSelector"] == {"ray.io/cluster": "arinv"}
        assert "s3://" in job["spec"]["entrypoint"] and "--storage-path" in job["spec"]["entrypoint"]
        yaml.safe_load(job["spec"]["runtimeEnvYAML"])  # a YAML string, as KubeRay expects


def test_mlflow_server_has_auth_postgres_s3_and_allowed_hosts():
    docs = [d for _, d in _docs()]
    dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    cmd = " ".join(c["args"])
    assert "--app-name basic-auth" in cmd and "postgresql://" in cmd
    assert "--artifacts-destination s3://" in cmd
    hosts = re.search(r'--allowed-hosts "([^"]+)"', cmd).group(1).split(",")
    assert "mlflow.arinv.svc.cluster.local:5000" in hosts and "mlflow:5000" in hosts
    env = {e["name"]: e for e in c["env"]}
    for k in ("DB_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert "secretKeyRef" in env[k]["valueFrom"], k
    db = next(d for d in docs if d["kind"] == "StatefulSet")
    assert db["spec"]["template"]["spec"]["containers"][0]["image"].startswith("postgres:")


MODULE_COMMANDS = {"pipelines.train_encoder": "train-encoder",
                   "pipelines.train_generator": "train-generator", "pipelines.sweep": "sweep"}


def test_every_rayjob_entrypoint_is_a_valid_command_and_config():
    """What each RayJob would run parses with the CLI and its config (with the --set fields)
    loads and validates, so a typo in a manifest fails here, not after a cluster is up."""
    import shlex

    from arinv.config import config_class, load_config
    from pipelines.cli import _parser

    for _, job in ((p, d) for p, d in _docs() if d["kind"] == "RayJob"):
        argv = shlex.split(job["spec"]["entrypoint"])
        assert argv[:2] == ["python", "-m"], argv
        args = _parser().parse_args([MODULE_COMMANDS[argv[2]], *argv[3:]])
        cfg = load_config(config_class(args.config), args.config, args.set)
        assert cfg.name and args.storage_path.startswith("s3://")
