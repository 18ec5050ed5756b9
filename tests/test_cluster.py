"""cluster.yaml passes Ray's own validation and keeps the promises the README makes about it."""

from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load(CLUSTER.read_text())


def test_ray_validates_the_cluster_config(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cluster))


def test_the_head_runs_no_trials_and_gpu_workers_scale_from_zero(cluster):
    types = cluster["available_node_types"]
    assert types[cluster["head_node_type"]]["resources"] == {"CPU": 0}
    workers = [spec for name, spec in types.items() if name != cluster["head_node_type"]]
    assert workers and all(spec["min_workers"] == 0 for spec in workers)
    assert {spec["node_config"]["InstanceType"].split(".")[0] for spec in workers} == {"g5"}


def test_every_node_type_brings_its_own_security_group_and_image(cluster):
    # Without SecurityGroupIds, `ray up` creates a group with SSH open to 0.0.0.0/0; without ImageId it picks
    # an old Ubuntu 18.04 image.
    for name, spec in cluster["available_node_types"].items():
        assert spec["node_config"]["SecurityGroupIds"], name
        assert spec["node_config"]["ImageId"].startswith("ami-"), name
        assert spec["node_config"]["IamInstanceProfile"]["Arn"], name


def test_nothing_listens_on_every_address_and_ray_runs_from_the_locked_environment(cluster):
    commands = " ".join(cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"])
    assert "0.0.0.0" not in commands and "--dashboard-host=127.0.0.1" in commands
    assert ".venv/bin/ray start" in commands
    assert cluster["head_setup_commands"] == []  # Ray's default pip-installs boto3 into the system Python
    assert any("uv sync --frozen --extra cluster" in c for c in cluster["setup_commands"])
    assert cluster["idle_timeout_minutes"] > 0
