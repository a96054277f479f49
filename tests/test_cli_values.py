"""Numeric command-line values (robustreg.cli): absurd ones end the command in one line that
names the option, before any model or data file is read."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from robustreg import cli
from robustreg.cli import main

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


def test_the_cli_bounds_are_the_config_schemas():
    defs = yaml.safe_load(SCHEMA.read_text())["$defs"]
    imagenet = yaml.safe_load(SCHEMA.read_text())["properties"]["data"]["properties"]["imagenet"]
    assert defs["seed"]["maximum"] == cli.MAX_SEED
    assert defs["natural"]["maximum"] == cli.MAX_COUNT
    assert defs["batch_size"]["maximum"] == cli.MAX_BATCH_SIZE
    assert defs["samples"]["maximum"] == cli.MAX_SAMPLES
    assert defs["side"]["maximum"] == cli.MAX_SIDE
    assert defs["synthetic_images"]["maximum"] == cli.MAX_SYNTHETIC_IMAGES
    assert imagenet["properties"]["synthetic"]["properties"]["classes"]["maximum"] == (
        cli.MAX_CLASSES
    )


def _job(command: str, tmp_path: Path) -> list[str]:
    """A command whose model and data do not exist: any check that passes reaches them."""
    model, data, out = tmp_path / "no-model.pt", tmp_path / "no-data.npz", tmp_path / "out"
    common = ["--model", str(model), "--data", str(data), "--out-dir", str(out)]
    if command == "certify":
        return ["certify", *common, "--sigma", "0.25"]
    if command == "attack":
        return ["attack", *common, "--attack-json", '{"kind": "none"}']
    return ["bounds", *common, "--bounds-json", '{"norm": "l2", "eps": [1.0], "block": 1}']


@pytest.mark.parametrize(
    ("command", "option", "value", "says"),
    [
        ("certify", "--sigma", "inf", "need a finite number > 0, got 'inf'"),
        ("certify", "--sigma", "0", "need a finite number > 0, got '0'"),
        ("certify", "--alpha", "nan", "need a finite number in (0, 1), got 'nan'"),
        ("certify", "--alpha", "1", "need a finite number in (0, 1), got '1'"),
        ("certify", "--seed", "1e23", "need a whole number, got '1e23'"),
        ("certify", "--seed", "100000000000000000000000", "need 0 to 4294967295, got 1000"),
        ("certify", "--batch-size", "1000000000000", "need 1 to 1048576, got 1000000000000"),
        ("certify", "--n", "1000000000000", "need 1 to 100000000, got 1000000000000"),
        ("certify", "--n0", "0", "need 1 to 100000000, got 0"),
        ("certify", "--skip", "100000000000000000000", "need 1 to 2147483647, got 1000"),
        ("certify", "--max-images", "-1", "need 0 to 2147483647, got -1"),
        ("certify", "--threads", "1e6", "need a whole number, got '1e6'"),
        ("attack", "--batch-size", "0", "need 1 to 1048576, got 0"),
        ("attack", "--seed", "-1", "need 0 to 4294967295, got -1"),
        ("attack", "--sample", "1.5", "need a whole number, got '1.5'"),
        ("bounds", "--sample-seed", "4294967296", "need 0 to 4294967295, got 4294967296"),
        ("bounds", "--batch-size", "1e12", "need a whole number, got '1e12'"),
    ],
)
def test_absurd_numbers_end_the_command_before_the_model_is_read(
    tmp_path, capsys, command, option, value, says
):
    assert main([*_job(command, tmp_path), option, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"robustreg {command}: error: argument {option}: {says}")
    assert err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--alpha", "nan"], "argument --alpha: need a finite number in (0, 1), got 'nan'"),
        (["--alpha", "0.01", "--grid", "0.5", "inf"], "argument --grid: need a finite number"),
        (["--alpha", "0.01", "--grid", "0"], "argument --grid: need a finite number in (0, 1]"),
    ],
)
def test_tcertify_numbers_are_checked_before_the_counts_are_read(tmp_path, capsys, argv, says):
    args = ["tcertify", "--counts", str(tmp_path / "none.npz"), "--out", str(tmp_path / "t.tsv")]
    assert main([*args, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"robustreg tcertify: error: {says}") and err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--crop", "100000"], "argument --crop: need 1 to 4096, got 100000"),
        (["--synthetic-classes", "5000"], "argument --synthetic-classes: need 2 to 1000, got 5000"),
        (["--synthetic-train", "1e9"], "argument --synthetic-train: need a whole number, got"),
        (["--split-seed", "-3"], "argument --split-seed: need 0 to 4294967295, got -3"),
    ],
)
def test_data_numbers_are_checked_before_anything_is_written(tmp_path, capsys, argv, says):
    out = tmp_path / "prepared"
    args = ["data", "--dataset", "imagenet", "--source", "synthetic", "--out-dir", str(out)]
    assert main([*args, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"robustreg data: error: {says}") and err.count("\n") == 1
    assert not out.exists()


def test_usage_errors_are_one_line_too(capsys):
    assert main(["certify", "--sigma", "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robustreg certify: error: the following arguments are required: ")
    assert err.count("\n") == 1
    assert main(["certify", "--help"]) == 0
    assert "--sigma" in capsys.readouterr().out
