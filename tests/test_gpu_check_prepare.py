"""The GPU check's preparation (issue 21): the wheel list, the closure of its requirements over
the GPU machine's packages, the wheel slimming, and the run step's failure summary. No network:
the wheels fetched by `make gpu-check` are checked only where .whl/ holds them."""

from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu-check"
HELPER = REPO / "scripts" / "gpu_check_wheels.py"
WHEEL_LIST = REPO / "scripts" / "gpu-check-wheels.txt"


def _load_helper():
    spec = importlib.util.spec_from_file_location("gpu_check_wheels", HELPER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


gcw = _load_helper()


def fake_wheel(folder: Path, name: str, version: str, requires=(), files=None) -> Path:
    """A minimal wheel: METADATA with Requires-Dist lines, a RECORD, and `files`."""
    files = {f"{name}/__init__.py": b"", **(files or {})}
    info = f"{name}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    files[f"{info}/METADATA"] = meta.encode()
    record = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for member, data in files.items():
            z.writestr(member, data)
        z.writestr(f"{info}/RECORD", record)
    return path


def test_wheel_list_parses_lists_each_package_once_and_carries_nothing_the_machine_has():
    entries = gcw.parse_list(WHEEL_LIST.read_text())
    names = [e.name for e in entries]
    assert len(names) == len(set(names))
    assert {"snakemake", "foolbox", "pyautoattack", "jsonschema", "rpds-py"} <= set(names)
    assert not set(names) & set(gcw.machine_packages())
    assert not set(names) & gcw.NOT_CARRIED


def test_wheel_list_pins_the_versions_of_constraints_txt():
    entries = gcw.parse_list(WHEEL_LIST.read_text())
    assert gcw.pin_mismatches(entries, (REPO / "constraints.txt").read_text()) == []


def test_pin_mismatches_names_the_package():
    entries = gcw.parse_list("Foo_Bar==1.0\nbaz==2.0.0\n")
    assert gcw.pin_mismatches(entries, "foo-bar==1.1\nbaz==2.0\n") == [
        "foo-bar==1.0 but constraints.txt pins 1.1"
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("foo\n", "line 1: expected NAME==VERSION"),
        ("# c\nfoo==1\nFoo==2\n", "line 3: foo is listed twice"),
        ("foo==1 stripp=a/\n", "line 1: unknown option 'stripp=a/'"),
        ("foo==1 strip=\n", "line 1: unknown option 'strip='"),
    ],
)
def test_parse_list_rejects_bad_lines(text, message):
    with pytest.raises(ValueError, match=message):
        gcw.parse_list(text)


def test_parse_list_reads_options():
    (entry,) = gcw.parse_list("pkg==1.0 build strip=a/ strip=b/c  # why\n")
    assert entry == gcw.Entry("pkg", "1.0", True, ("a/", "b/c"))


def test_gpu_check_script_is_valid_bash_and_executable():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    assert os.access(SCRIPT, os.X_OK)


def _dist(name, version="1.0", *requires, python=None):
    return gcw.Dist(name, version, tuple(requires), python)


MACHINE = {"numpy": Version("2.5.2"), "attrs": None}


def test_closure_of_a_complete_set_has_no_problems():
    dists = [
        _dist(
            "top", "1.0", "mid>=1", "numpy>=2", "old; python_version < '3.10'", "x; extra == 'x'"
        ),
        _dist("mid", "1.5", "attrs", "leaf[fast]"),
        _dist("leaf", "0.1", "speedup; extra == 'fast'"),
        _dist("speedup"),
    ]
    assert gcw.closure(dists, MACHINE, ["top>=1"]) == ([], [])


@pytest.mark.parametrize(
    ("dists", "problem"),
    [
        ([_dist("top", "1.0", "gone")], "top needs gone: neither carried nor on the GPU machine"),
        ([_dist("top", "1.0", "mid<1"), _dist("mid", "1.5")], "top needs mid<1, carried mid==1.5"),
        ([_dist("top"), _dist("spare")], "spare is carried but nothing needs it"),
        ([_dist("top", "1.0", "attrs"), _dist("attrs")], "attrs is carried but the GPU machine"),
        ([_dist("top"), _dist("top", "2.0")], "top carried twice"),
        ([_dist("top", python=">=3.13")], "top==1.0 requires Python >=3.13"),
        ([_dist("top", "1.0", "leaf[fast]"), _dist("leaf", "1", "s; extra == 'fast'")], "needs s"),
    ],
)
def test_closure_finds_each_kind_of_problem(dists, problem):
    problems, _ = gcw.closure(dists, MACHINE, ["top"])
    assert any(problem in p for p in problems), problems


def test_closure_notes_a_machine_version_without_failing():
    problems, notes = gcw.closure([_dist("top", "1.0", "numpy<2")], MACHINE, ["top"])
    assert problems == []
    assert notes == ["top needs numpy<2; the GPU machine has numpy 2.5.2"]


@pytest.mark.parametrize(
    ("filename", "fits"),
    [
        ("a-1-py3-none-any.whl", True),
        ("a-1-py2.py3-none-any.whl", True),
        ("a-1-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", True),
        ("a-1-cp38-abi3-manylinux_2_28_x86_64.whl", True),
        ("a-1-cp311-cp311-manylinux_2_17_x86_64.whl", False),
        ("a-1-cp312-cp312-manylinux_2_17_aarch64.whl", False),
        ("a-1-cp312-cp312-win_amd64.whl", False),
    ],
)
def test_tag_fits(filename, fits):
    assert gcw.tag_fits(filename) is fits


def test_strip_wheel_drops_members_and_record_rows_and_keeps_modes(tmp_path):
    wheel = fake_wheel(
        tmp_path,
        "pkg",
        "1.0",
        files={"pkg/examples/big.pt": b"x" * 50_000, "pkg/bin/tool": b"#!/bin/sh\n"},
    )
    with zipfile.ZipFile(wheel, "a") as z:  # an executable member, as PuLP's CBC is
        info = zipfile.ZipInfo("pkg/bin/run")
        info.external_attr = (stat.S_IFREG | 0o755) << 16
        z.writestr(info, b"#!/bin/sh\n")
    assert gcw.strip_wheel(wheel, ("pkg/examples/",)) > 0
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        record = z.read("pkg-1.0.dist-info/RECORD").decode()
        mode = z.getinfo("pkg/bin/run").external_attr >> 16
    assert "pkg/examples/big.pt" not in names and "pkg/bin/tool" in names
    assert "examples" not in record and "pkg/bin/tool" in record
    assert mode & 0o111
    assert gcw.read_dist(wheel).name == "pkg"
    assert gcw.strip_wheel(wheel, ("pkg/examples/",)) == 0


def _project(tmp_path: Path, list_text: str) -> list[str]:
    (tmp_path / "wheels.txt").write_text(list_text)
    (tmp_path / "constraints.txt").write_text("top==1.0\n")
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\ndependencies = ["top", "snakemake-executor-plugin-slurm"]\n'
    )
    files = {"list": "wheels.txt", "dir": "whl", "constraints": "constraints.txt"}
    files["pyproject"] = "pyproject.toml"
    return [arg for flag, name in files.items() for arg in (f"--{flag}", str(tmp_path / name))]


def test_check_command_passes_a_closed_folder_and_fails_an_open_one(tmp_path, capsys):
    (tmp_path / "whl").mkdir()
    fake_wheel(tmp_path / "whl", "top", "1.0", ["leaf>=2", "numpy"])
    fake_wheel(tmp_path / "whl", "leaf", "2.0")
    args = _project(tmp_path, "top==1.0\nleaf==2.0\n")
    assert gcw.main(["check", *args]) == 0
    assert "every requirement met" in capsys.readouterr().out

    fake_wheel(tmp_path / "whl", "top", "1.0", ["leaf>=2", "gone"])
    assert gcw.main(["check", *args]) == 1
    assert "top needs gone: neither carried" in capsys.readouterr().out


def test_check_command_fails_on_a_pin_that_differs_from_constraints(tmp_path, capsys):
    (tmp_path / "whl").mkdir()
    assert gcw.main(["check", *_project(tmp_path, "top==0.9\n")]) == 1
    assert "top==0.9 but constraints.txt pins 1.0" in capsys.readouterr().out


@pytest.mark.skipif(
    not any((REPO / ".whl").glob("*.whl")), reason=".whl/ is empty: run make gpu-check"
)
def test_downloaded_wheels_close_over_the_gpu_machine():
    entries = gcw.parse_list(WHEEL_LIST.read_text())
    problems, _ = gcw.check_folder(REPO / ".whl", entries, gcw.roots(REPO / "pyproject.toml"))
    assert problems == []


def _run_copy(tmp_path: Path, wheels: dict[str, bytes]) -> tuple[subprocess.CompletedProcess, str]:
    """`scripts/gpu-check run` in a scratch checkout holding only the scripts and `wheels`."""
    (tmp_path / "scripts").mkdir()
    for path in (SCRIPT, HELPER):
        (tmp_path / "scripts" / path.name).write_bytes(path.read_bytes())
    (tmp_path / ".whl").mkdir()
    for name, data in wheels.items():
        (tmp_path / ".whl" / name).write_bytes(data)
    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(
        ["bash", str(tmp_path / "scripts" / "gpu-check"), "run", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    return proc, (out / "gpu_check.md").read_text()


def test_run_without_wheels_still_writes_the_summary(tmp_path):
    proc, summary = _run_copy(tmp_path, {})
    assert proc.returncode == 1
    assert 'FAILED at install: no wheels in .whl/: name ".whl" in the device' in summary


def test_run_with_a_broken_wheel_still_writes_the_summary(tmp_path):
    proc, summary = _run_copy(tmp_path, {"broken-1.0-py3-none-any.whl": b"not a zip"})
    assert proc.returncode == 1
    assert "FAILED at install: pip install of .whl/:" in summary
    assert "broken" in summary


def test_run_needs_an_output_folder():
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    proc = subprocess.run(["bash", str(SCRIPT), "run"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert "no output folder" in proc.stderr
