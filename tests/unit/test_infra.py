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
