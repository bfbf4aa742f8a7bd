"""cluster.yaml, checked offline: Ray's own schema (prepare_config, then
validate_config, which read only files shipped with Ray: no AWS call, no
credentials), a misspelt key refused by name, and the properties the file
promises: only SSH open to the internet, token authentication on every node,
the project installed at its pinned versions, EFS shared by every node."""
import copy
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"
TOKEN = "~/.ray/auth_token"

# EC2 RunInstances parameters (boto3's create_instances), plus Ray's own SubnetIds:
# Ray's schema leaves node_config free-form, so a typo there would surface only at launch.
EC2_PARAMETERS = {
    "AdditionalInfo", "BlockDeviceMappings", "CapacityReservationSpecification",
    "ClientToken", "CpuOptions", "CreditSpecification", "DisableApiStop",
    "DisableApiTermination", "EbsOptimized", "EnablePrimaryIpv6", "EnclaveOptions",
    "HibernationOptions", "IamInstanceProfile", "ImageId",
    "InstanceInitiatedShutdownBehavior", "InstanceMarketOptions", "InstanceType",
    "Ipv6AddressCount", "Ipv6Addresses", "KernelId", "KeyName", "LaunchTemplate",
    "LicenseSpecifications", "MaintenanceOptions", "MetadataOptions", "Monitoring",
    "NetworkInterfaces", "NetworkPerformanceOptions", "Placement", "PrivateDnsNameOptions",
    "PrivateIpAddress", "RamdiskId", "SecurityGroupIds", "SecurityGroups", "SubnetId",
    "SubnetIds", "TagSpecifications", "UserData",
}


@pytest.fixture(autouse=True)
def no_aws(monkeypatch, tmp_path):
    """No AWS credentials or config can be found while the tests run."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


def load(path=CLUSTER_YAML) -> dict:
    return yaml.safe_load(Path(path).read_text())


def validate_cluster_config(config: dict) -> dict:
    """Ray's checks as `ray up` runs them (defaults filled in, then the schema),
    then the EC2 parameter names. Returns the prepared config."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    for name, node_type in prepared["available_node_types"].items():
        unknown = set(node_type["node_config"]) - EC2_PARAMETERS
        if unknown:
            raise ValueError(f"{name}.node_config: unknown EC2 parameter(s) {sorted(unknown)}")
    return prepared


def start_commands(config: dict) -> list[str]:
    return config["head_start_ray_commands"] + config["worker_start_ray_commands"]


def all_setup_commands(config: dict) -> list[str]:
    return (config.get("initialization_commands", []) + config["setup_commands"]
            + config.get("head_setup_commands", []) + config.get("worker_setup_commands", []))


def open_to_internet(rules: list[dict]) -> list[tuple]:
    """(protocol, from port, to port) of every inbound rule open to any address."""
    return [(r.get("IpProtocol"), r.get("FromPort"), r.get("ToPort")) for r in rules
            if any(x.get("CidrIp") == "0.0.0.0/0" for x in r.get("IpRanges", []))
            or any(x.get("CidrIpv6") == "::/0" for x in r.get("Ipv6Ranges", []))]


def test_cluster_yaml_passes_rays_schema_offline():
    prepared = validate_cluster_config(load())
    assert prepared["provider"]["type"] == "aws"
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["max_workers"] == 0
    gpu = [t for name, t in prepared["available_node_types"].items()
           if name != prepared["head_node_type"]]
    assert len(gpu) == 1 and gpu[0]["min_workers"] == 0 and gpu[0]["max_workers"] >= 1
    assert gpu[0]["node_config"]["InstanceType"].startswith("g5.")


@pytest.mark.parametrize("key, misspelt", [
    ("head_start_ray_commands", "head_start_ray_comands"),    # top level
    ("min_workers", "min_worker"),                            # a node type
    ("IpPermissions", "IpPermision"),                         # provider.security_group
    ("InstanceType", "InstanceTyp"),                          # node_config (EC2)
])
def test_a_misspelt_key_fails_and_is_named(tmp_path, key, misspelt):
    text = CLUSTER_YAML.read_text()
    line = re.compile(rf"^(\s*){key}:", re.M)
    assert len(line.findall(text)) >= 1, key
    broken = tmp_path / "cluster.yaml"
    broken.write_text(line.sub(rf"\g<1>{misspelt}:", text, count=1))
    with pytest.raises((jsonschema.ValidationError, ValueError), match=f"'{misspelt}'"):
        validate_cluster_config(load(broken))


def test_only_ssh_is_open_to_the_internet():
    config = load()
    group = config["provider"]["security_group"]
    assert group["GroupName"] not in ("", "default")
    # Ray's own group then holds its two default rules (members of the group, SSH)
    # plus these: no node may bring another group or interface of its own.
    for name, node_type in config["available_node_types"].items():
        assert not {"SecurityGroupIds", "NetworkInterfaces", "LaunchTemplate"} & set(
            node_type["node_config"]), name
    assert set(open_to_internet(group.get("IpPermissions", []))) <= {("tcp", 22, 22)}
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in " ".join(start_commands(config))

    # The check itself sees a public dashboard rule.
    dashboard = {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265,
                 "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    assert open_to_internet(group.get("IpPermissions", []) + [dashboard]) == [("tcp", 8265, 8265)]


def test_token_auth_on_every_node():
    config = load()
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        starts = [c for c in commands if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), starts
    # The laptop's token, at Ray's default path on the head, and from there on every worker.
    assert config["file_mounts"][TOKEN] == TOKEN
    assert f"chmod 600 {TOKEN}" in config["setup_commands"]
    assert "RAY_AUTH_TOKEN=" not in CLUSTER_YAML.read_text()    # never the token itself


def test_every_node_starts_serve_in_the_high_throughput_mode_of_hashgan_ray_serve():
    """The RAY_SERVE_* variables of each `ray start` are those `hashgan-ray serve`
    sets for a local Ray (serving/ingress.py), with HAProxy's files in /tmp/hgha
    (made mode 700 first) and Ray's own ports for HAProxy's stats and metrics."""
    import shlex

    from hashgan_ray.serving.ingress import ingress_env

    wanted = {k: v for k, v in ingress_env("haproxy", "/tmp/hgha").items()
              if not k.endswith("_PORT")}
    config = load()
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        (start,) = [c for c in commands if "ray start" in c]
        words = shlex.split(start.split(";")[-1])
        assigned = dict(w.split("=", 1) for w in words[:words.index("ray")])
        assert {k: v for k, v in assigned.items() if k.startswith("RAY_SERVE_")} == wanted
        assert "mkdir -p -m 700 /tmp/hgha" in start


def test_setup_installs_the_project_at_pinned_versions():
    config = load()
    mounts = config["file_mounts"]
    for name in ("pyproject.toml", "constraints.txt", "README.md", "LICENSE"):
        assert mounts[f"~/hashgan-ray/{name}"] == f"./{name}", name
    assert mounts["~/hashgan-ray/hashgan_ray"] == "./hashgan_ray"
    assert "pip install -c ~/hashgan-ray/constraints.txt ~/hashgan-ray" in config["setup_commands"]

    # The laptop that runs `ray up` and `ray job submit` must run the cluster's Ray
    # (the constraints' other pins are checked in tests/test_packaging.py).
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert pins["ray"] == ray.__version__
    assert "torch" in pins and "torchvision" in pins

    # Anything else the setup installs is pinned too.
    for command in all_setup_commands(config):
        for install in re.findall(r"pip install ([^;&|]+)", command):
            args = install.split()
            for i, arg in enumerate(args):
                constraints = i > 0 and args[i - 1] == "-c"
                assert arg.startswith("-") or arg == "~/hashgan-ray" or "==" in arg or (
                    constraints and arg == "~/hashgan-ray/constraints.txt"), command
        if "astral.sh/uv" in command:
            assert re.search(r"astral\.sh/uv/\d+\.\d+\.\d+/install\.sh", command), command


def test_file_mount_sources_exist():
    for remote, local in load()["file_mounts"].items():
        if remote != TOKEN:          # the token is made on the laptop, never in the repository
            assert (REPO / local).exists(), f"{remote}: {local} is missing"


def test_every_node_mounts_the_efs_of_its_region():
    config = load()
    mounts = [m for c in config["setup_commands"] for m in re.finditer(
        r"mount -t nfs4 .*?(fs-\w+)\.efs\.([a-z0-9-]+)\.amazonaws\.com:/ /mnt/efs", c)]
    assert len(mounts) == 1
    assert mounts[0].group(2) == config["provider"]["region"]
