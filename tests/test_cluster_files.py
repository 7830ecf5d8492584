"""The files in cluster/: they parse, validate where a schema exists, run commands that exist with keys
that exist, pin the Ray version pyproject.toml pins, and keep their safe defaults."""

import re
import shlex
from pathlib import Path

import pytest
import tomllib
import yaml

from ltdi_ray.config import load_config
from ltdi_ray.stages import STAGES

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
YAMLS = sorted(CLUSTER.rglob("*.yaml"))
COMMAND = re.compile(r"python -m ltdi_ray ([a-z](?:[^\n\\`]|\\\n)+)")  # not the `<stage>` template


def pinned_ray() -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(re.search(r"==([\d.]+)", d).group(1) for d in deps if d.startswith("ray["))


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def commands():
    """Every ``python -m ltdi_ray <stage> k=v ...`` in cluster/ (YAML entrypoints folded, $URI filled in)."""
    found = []
    for path in sorted(CLUSTER.rglob("*")):
        if path.is_file():
            text = path.read_text().replace("$URI", "s3://my-bucket/ltdi/sinusoid")
            if path.suffix == ".yaml":
                text = yaml.safe_dump(yaml.safe_load(text), width=10**6)
            found += [(path.name, shlex.split(m.replace("\\\n", " ").split("#")[0])) for m in COMMAND.findall(text)]
    return found


def test_every_file_parses_and_the_set_is_complete():
    assert {p.relative_to(CLUSTER).as_posix() for p in YAMLS} == {
        "aws-gpu.yaml", "runtime_env.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "kuberay/networkpolicy.yaml"}
    for path in YAMLS:
        assert isinstance(yaml.safe_load(path.read_text()), dict), path


def test_launcher_yaml_passes_rays_own_schema():
    import copy

    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load("aws-gpu.yaml")
    validate_config(prepare_config(copy.deepcopy(config)))
    with pytest.raises(Exception, match="was unexpected"):
        validate_config(prepare_config({**copy.deepcopy(config), "head_typo": 1}))


@pytest.mark.parametrize("where,argv", commands(), ids=lambda v: v if isinstance(v, str) else " ".join(v[:2]))
def test_commands_name_a_stage_and_keys_that_exist(where, argv):
    stage, overrides = argv[0], argv[1:]
    assert stage in STAGES, f"{where}: unknown stage {stage}"
    load_config(overrides)  # raises ConfigError on an unknown key or a bad value


def test_commands_cover_the_stages_users_submit():
    assert {argv[0] for _, argv in commands()} >= {"collect", "train", "tune", "evaluate", "pipeline"}


def test_everything_pins_the_ray_version_of_pyproject():
    version = pinned_ray()
    images = re.findall(r"rayproject/ray:([\w.\-]+)", "".join(p.read_text() for p in CLUSTER.rglob("*") if p.is_file()))
    assert images and all(tag.startswith(f"{version}-") for tag in images)
    assert load("kuberay/raycluster.yaml")["spec"]["rayVersion"] == version


def test_launcher_keeps_ports_private_and_auth_on():
    config = load("aws-gpu.yaml")
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    assert all("RAY_AUTH_MODE=token" in cmd for cmd in starts if "ray start" in cmd)
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    for node in config["available_node_types"].values():
        assert "IamInstanceProfile" in node["node_config"]  # S3 through the instance's identity
        # the user's own group on every node: left without one, the launcher makes a group open to SSH from 0.0.0.0/0
        assert node["node_config"]["SecurityGroupIds"] == ["<sg-id>"]
    assert "security_group" not in config["provider"]
    readme = (CLUSTER / "README.md").read_text()
    assert "--port 22 --cidr <your-ip>/32" in readme and "--protocol -1 --source-group $SG" in readme


def test_kuberay_network_policy_admits_only_the_clusters_pods_and_its_submitters():
    policy = load("kuberay/networkpolicy.yaml")
    name = load("kuberay/raycluster.yaml")["metadata"]["name"]
    assert policy["kind"] == "NetworkPolicy" and policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["podSelector"] == {"matchLabels": {"ray.io/cluster": name}}  # every pod of the cluster
    rules = policy["spec"]["ingress"]
    peers = [peer for rule in rules for peer in rule["from"]]
    assert all("ipBlock" not in peer for peer in peers)  # no address range: selectors only
    for rule in rules:
        inside = rule["from"] == [{"podSelector": {"matchLabels": {"ray.io/cluster": name}}}]
        assert inside or rule["ports"] == [{"port": 8265, "protocol": "TCP"}], rule
    submitter = load("kuberay/rayjob.yaml")["spec"]["submitterPodTemplate"]["metadata"]["labels"]
    assert any(peer.get("podSelector", {}).get("matchLabels") == submitter for peer in peers)


def test_kuberay_keeps_the_head_internal_and_auth_on():
    cluster = load("kuberay/raycluster.yaml")["spec"]
    assert cluster["authOptions"] == {"mode": "token"}
    assert cluster["headGroupSpec"]["serviceType"] == "ClusterIP" and not cluster["headGroupSpec"]["enableIngress"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    assert all(p["spec"]["serviceAccountName"] == "ltdi-ray" for p in pods)
    job = load("kuberay/rayjob.yaml")["spec"]
    assert job["clusterSelector"] == {"ray.io/cluster": load("kuberay/raycluster.yaml")["metadata"]["name"]}


def test_no_file_carries_credentials():
    secret = re.compile(r"(AWS_SECRET_ACCESS_KEY|AWS_ACCESS_KEY_ID|AWS_SESSION_TOKEN|RAY_AUTH_TOKEN)\s*[:=]\s*\S",
                        re.IGNORECASE)
    for path in YAMLS + [CLUSTER / "Dockerfile"]:
        assert not secret.search(path.read_text()), path
    env = load("runtime_env.yaml")["env_vars"]
    assert not {k for k in env if "SECRET" in k or "KEY" in k or "TOKEN" in k}
