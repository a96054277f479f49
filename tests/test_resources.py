"""Each job's request: per stage, with per-dataset overrides, more time on each retry."""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO

from robustreg.plan import ConfigError, validate_config
from robustreg.resources import runtime_for, scaled, stage_request

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
RESOURCES = {
    "data": {"mem_mb": 4000, "runtime": 60, "imagenet": {"mem_mb": 16000}},
    "train": {
        "threads": 2,
        "mem_mb": 8000,
        "runtime": 240,
        "gpu": 1,
        "cifar10": {"runtime": 1440},
        "imagenet": {"threads": 8, "mem_mb": 32000, "runtime": 2880},
    },
}


def test_a_dataset_overrides_only_what_it_names():
    assert stage_request(RESOURCES, "train", "mnist") == {
        "threads": 2,
        "mem_mb": 8000,
        "runtime": 240,
        "gpu": 1,
    }
    assert stage_request(RESOURCES, "train", "cifar10")["runtime"] == 1440
    assert stage_request(RESOURCES, "train", "cifar10")["mem_mb"] == 8000
    assert stage_request(RESOURCES, "data", "imagenet") == {"mem_mb": 16000, "runtime": 60}


def test_data_parallel_training_asks_for_every_process_but_one_time_limit():
    request = scaled(stage_request(RESOURCES, "train", "imagenet"), 4)
    assert request == {"threads": 32, "mem_mb": 128000, "runtime": 2880, "gpu": 4}


def test_each_attempt_asks_for_more_time():
    assert [runtime_for(90, attempt) for attempt in (1, 2, 3)] == [90, 180, 270]


def test_paper_config_sizes_jobs_per_dataset():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    mnist = stage_request(config["resources"], "certify", "mnist")
    cifar = stage_request(config["resources"], "certify", "cifar10")
    assert cifar["runtime"] > mnist["runtime"]
    # two threads per GPU job: `--cores 8 --resources gpu=4` runs four at once
    for stage in ("train", "certify", "attack", "bounds"):
        request = stage_request(config["resources"], stage, "mnist")
        assert (request["threads"], request["gpu"]) == (2, 1)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"train": {"svhn": {"runtime": 10}}}, "resources.train"),
        ({"certify": {"cifar10": {"runtime": 0}}}, "resources.certify.cifar10.runtime"),
        ({"attack": {"imagenet": {"gpus": 1}}}, "resources.attack.imagenet"),
    ],
)
def test_bad_requests_are_named(change, key):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for stage, value in change.items():
        config["resources"][stage] = config["resources"][stage] | value
    with pytest.raises(ConfigError, match=f"^{key}"):
        validate_config(config, SCHEMA)
