"""The wheels carried to the GPU machine: read their list, fetch and slim them, check them.

scripts/gpu-check calls this on both machines: `prepare` here (fills .whl/ from
scripts/gpu-check-wheels.txt and checks the set), `installed` on the GPU machine (checks the
installed set against the versions found there). It needs only the standard library and
`packaging`, which both machines have.

pip resolves nothing here: the wheels are fetched with --no-deps for another Python and
platform, where pip cannot install them to check its own resolution, so the closure of their
requirements is checked by hand against the GPU machine's package list.
"""

from __future__ import annotations

import argparse
import csv
import email.parser
import io
import os
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

MIB = 1 << 20
# What the device tool sends at most: tracked and untracked-not-ignored files plus carried paths.
TRAVEL_LIMIT = 64 * MIB

# The GPU machine's Python and what it already holds: /work/.library/device/KINDS.md, image
# 'cuda' as read on 2026-11-17; versions where a session's pip list gave them. A carried wheel
# of one of these would shadow the machine's build (torch above all), so none is carried.
PYTHON_FULL_VERSION = "3.12.3"
MACHINE = """
absl-py accelerate==1.15.0 aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
botorch==0.18.1 build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x==14.2.0 cycler cython
diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
frozenlist fsspec gpytorch==1.15.2 grpcio h11 h5py hf-xet httpcore httpx huggingface-hub==1.33.0
humanize hypothesis idna imageio iniconfig interface-meta jax==0.11.2 jax-cuda13-pjrt==0.11.2
jax-cuda13-plugin==0.11.2 jaxlib==0.11.2 jaxtyping==0.3.11 jinja2 joblib kiwisolver lazy-loader
lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py
markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch
mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy==2.5.2 numpyro==0.21.0
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13
nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx==1.23.1
onnx-ir==1.0.0 onnxruntime==1.30.0 onnxscript==0.7.2 opencv-python-headless optax opt-einsum
opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning==2.6.6 pyyaml regex requests rich
sacrebleu safetensors==0.8.0 scikit-build-core scikit-image scikit-learn scipy seaborn
sentencepiece==0.2.2 sentence-transformers==6.0.1 setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken==0.14.0 timm tokenizers==0.23.2 toolz torch==2.11.0
torchaudio==2.11.0 torchdiffeq==0.2.5 torch-geometric==2.8.0.post1 torchmetrics==1.9.0
torchvision==0.26.0 tqdm transformers==5.17.0 treescope triton==3.6.0 typer typing-extensions
typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
"""
# pyproject dependencies the GPU check does not use (it runs Snakemake locally, not on SLURM).
NOT_CARRIED = frozenset({"snakemake-executor-plugin-slurm"})
# The markers of the GPU machine (PEP 508), for wheels judged here on another Python.
MACHINE_ENV = {
    "python_version": ".".join(PYTHON_FULL_VERSION.split(".")[:2]),
    "python_full_version": PYTHON_FULL_VERSION,
    "implementation_name": "cpython",
    "implementation_version": PYTHON_FULL_VERSION,
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "platform_release": "",
    "platform_version": "",
}
# The device README's flags: pip matches manylinux_2_N tags exactly, so each is named.
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
PIP_TARGET = [
    "--only-binary=:all:",
    "--python-version",
    MACHINE_ENV["python_version"],
    "--implementation",
    "cp",
    *(f"--platform={p}" for p in PLATFORMS),
]


@dataclass(frozen=True)
class Entry:
    """One line of gpu-check-wheels.txt."""

    name: str  # canonical (PEP 503)
    version: str
    build: bool = False
    strip: tuple[str, ...] = ()


@dataclass(frozen=True)
class Dist:
    """What a wheel declares: its name, version and requirements (METADATA)."""

    name: str
    version: str
    requires: tuple[str, ...] = ()
    requires_python: str | None = None


def parse_list(text: str, source: str = "gpu-check-wheels.txt") -> list[Entry]:
    """The entries of a wheel list; ValueError naming the line for a bad or repeated one."""
    entries: dict[str, Entry] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        name, sep, version = words[0].partition("==")
        if not sep or not name or not version:
            raise ValueError(f"{source} line {number}: expected NAME==VERSION, got {words[0]!r}")
        build, strip = False, []
        for word in words[1:]:
            if word == "build":
                build = True
            elif word.startswith("strip=") and len(word) > len("strip="):
                strip.append(word.removeprefix("strip="))
            else:
                raise ValueError(f"{source} line {number}: unknown option {word!r}")
        key = canonicalize_name(name)
        if key in entries:
            raise ValueError(f"{source} line {number}: {key} is listed twice")
        entries[key] = Entry(key, version, build, tuple(strip))
    return list(entries.values())


def pin_mismatches(entries: list[Entry], constraints: str) -> list[str]:
    """Entries whose version differs from constraints.txt's pin of the same package."""
    pins = {}
    for raw in constraints.splitlines():
        name, sep, version = raw.split("#", 1)[0].strip().partition("==")
        if sep:
            pins[canonicalize_name(name)] = version.strip()
    return [
        f"{e.name}=={e.version} but constraints.txt pins {pins[e.name]}"
        for e in entries
        if e.name in pins and Version(pins[e.name]) != Version(e.version)
    ]


def machine_packages(text: str = MACHINE) -> dict[str, Version | None]:
    """MACHINE as {canonical name: version, or None where no version was read}."""
    out: dict[str, Version | None] = {}
    for word in text.split():
        name, _, version = word.partition("==")
        out[canonicalize_name(name)] = Version(version) if version else None
    return out


def roots(pyproject: Path) -> list[str]:
    """robustreg's runtime requirements that the GPU check needs."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return [d for d in deps if canonicalize_name(Requirement(d).name) not in NOT_CARRIED]


def read_dist(wheel: Path) -> Dist:
    """The METADATA of a wheel, from the one top-level *.dist-info folder in it."""
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n.count("/") == 1]
        meta = [n for n in names if n.endswith(".dist-info/METADATA")]
        if len(meta) != 1:
            raise ValueError(f"{wheel.name}: expected one .dist-info/METADATA, found {len(meta)}")
        msg = email.parser.Parser().parsestr(z.read(meta[0]).decode())
    return Dist(
        canonicalize_name(msg["Name"]),
        msg["Version"],
        tuple(msg.get_all("Requires-Dist") or ()),
        msg["Requires-Python"],
    )


def tag_fits(filename: str) -> bool:
    """Whether a wheel installs on CPython 3.12, linux x86_64 (manylinux, glibc >= 2.28)."""
    minor = int(MACHINE_ENV["python_version"].split(".")[1])
    for tag in parse_wheel_filename(filename)[3]:
        if tag.platform != "any" and not (
            tag.platform.startswith("manylinux") and tag.platform.endswith("_x86_64")
        ):
            continue
        if tag.abi == "none" and tag.interpreter in ("py3", f"cp3{minor}"):
            return True
        if tag.abi == f"cp3{minor}" and tag.interpreter == f"cp3{minor}":
            return True
        if tag.abi == "abi3" and tag.interpreter.startswith("cp3"):
            return int(tag.interpreter[3:]) <= minor
    return False


def _applies(req: Requirement, extras: frozenset[str], env: dict[str, str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**env, "extra": e}) for e in extras | {""})


def closure(
    dists: list[Dist],
    machine: dict[str, Version | None],
    wanted: list[str],
    env: dict[str, str] = MACHINE_ENV,
) -> tuple[list[str], list[str]]:
    """Problems and notes of a carried set, starting from the requirements `wanted`.

    Problems: a requirement (markers evaluated for `env`, extras followed) met neither by a
    carried wheel nor by the machine, a carried version outside a requirement, a package
    carried twice, carried although the machine has it, carried but needed by nothing, or
    refusing the machine's Python. Notes: a requirement that a machine package of known version
    does not meet; it is not carried (torch and numpy must stay the machine's builds), so the
    GPU check shows whether it matters.
    """
    problems: list[str] = []
    notes: list[str] = []
    carried: dict[str, Dist] = {}
    for d in dists:
        if d.name in carried:
            problems.append(f"{d.name} carried twice ({carried[d.name].version}, {d.version})")
        carried[d.name] = d
        if d.name in machine:
            problems.append(f"{d.name} is carried but the GPU machine has it already")
        python = env["python_full_version"]
        if d.requires_python and not SpecifierSet(d.requires_python).contains(python, True):
            problems.append(f"{d.name}=={d.version} requires Python {d.requires_python}")
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(Requirement(r), "robustreg") for r in wanted]
    while todo:
        req, by = todo.pop()
        name = canonicalize_name(req.name)
        if name in carried:
            dist = carried[name]
            if not req.specifier.contains(dist.version, prereleases=True):
                problems.append(f"{by} needs {req}, carried {name}=={dist.version}")
            key = (name, frozenset(req.extras))
            if key in seen:
                continue
            seen.add(key)
            for text in dist.requires:
                sub = Requirement(text)
                if _applies(sub, key[1], env):
                    todo.append((sub, name))
        elif name in machine:
            have = machine[name]
            if have is not None and not req.specifier.contains(have, prereleases=True):
                notes.append(f"{by} needs {req}; the GPU machine has {name} {have}")
        else:
            problems.append(f"{by} needs {req}: neither carried nor on the GPU machine")
    used = {name for name, _ in seen}
    problems += [f"{n} is carried but nothing needs it" for n in carried if n not in used]
    return sorted(set(problems)), sorted(set(notes))


def strip_wheel(wheel: Path, prefixes: tuple[str, ...]) -> int:
    """Drop the members under `prefixes` (and their RECORD rows); the bytes saved.

    Rewritten with zipfile: no packaging tool slims a built wheel. Members keep their ZipInfo,
    so executables (PuLP's CBC) keep their mode.
    """
    with zipfile.ZipFile(wheel) as src:
        drop = {n for n in src.namelist() if n.startswith(prefixes)}
        if not drop:
            return 0
        before = wheel.stat().st_size
        fd, tmp = tempfile.mkstemp(suffix=".whl", dir=wheel.parent)
        os.close(fd)
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in src.infolist():
                if info.filename in drop:
                    continue
                data = src.read(info)
                if info.filename.endswith(".dist-info/RECORD"):
                    rows = csv.reader(io.StringIO(data.decode()))
                    out = io.StringIO()
                    csv.writer(out, lineterminator="\n").writerows(
                        r for r in rows if r and not r[0].startswith(prefixes)
                    )
                    data = out.getvalue().encode()
                dst.writestr(info, data)
    os.chmod(tmp, wheel.stat().st_mode)
    os.replace(tmp, wheel)
    return before - wheel.stat().st_size


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", *args], check=True)


def sync(entries: list[Entry], folder: Path) -> list[str]:
    """Make `folder` hold exactly the listed wheels, slimmed; one line per action taken."""
    folder.mkdir(exist_ok=True)
    want = {(e.name, Version(e.version)): e for e in entries}
    have: dict[tuple[str, Version], Path] = {}
    log = []
    for wheel in sorted(folder.glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(wheel.name)
        key = (canonicalize_name(name), version)
        if key in want and key not in have:
            have[key] = wheel
        else:
            wheel.unlink()
            log.append(f"removed stale {wheel.name}")
    fetch = [e for k, e in want.items() if k not in have and not e.build]
    if fetch:
        pins = [f"{e.name}=={e.version}" for e in fetch]
        _pip("download", "--no-deps", *PIP_TARGET, "-d", str(folder), *pins)
        log.append(f"downloaded {len(fetch)}: " + " ".join(e.name for e in fetch))
    for e in (e for k, e in want.items() if k not in have and e.build):
        with tempfile.TemporaryDirectory() as tmp:
            _pip("wheel", "--no-deps", f"--no-binary={e.name}", "-w", tmp, f"{e.name}=={e.version}")
            (built,) = Path(tmp).glob("*.whl")
            if not tag_fits(built.name):
                raise ValueError(f"{e.name}: the wheel built from its sdist is {built.name}")
            built.rename(folder / built.name)
        log.append(f"built {built.name} from its sdist")
    for wheel in sorted(folder.glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(wheel.name)
        entry = want[(canonicalize_name(name), version)]
        if entry.strip and (saved := strip_wheel(wheel, entry.strip)):
            log.append(f"slimmed {wheel.name} by {saved / MIB:.1f} MiB")
    return log


def check_folder(
    folder: Path, entries: list[Entry], wanted: list[str]
) -> tuple[list[str], list[str]]:
    """The closure of the wheels in `folder`, plus wheels missing from or foreign to the list."""
    wheels = sorted(folder.glob("*.whl"))
    problems = [
        f"{w.name} does not fit CPython 3.12 linux x86_64" for w in wheels if not tag_fits(w.name)
    ]
    dists = [read_dist(w) for w in wheels]
    listed = {(e.name, Version(e.version)) for e in entries}
    found = {(d.name, Version(d.version)) for d in dists}
    problems += [f"{n}=={v} is listed but not in {folder}" for n, v in sorted(listed - found)]
    problems += [f"{n}=={v} is in {folder} but not listed" for n, v in sorted(found - listed)]
    more, notes = closure(dists, machine_packages(), wanted)
    return problems + more, notes


def travel_bytes(repo: Path, carried: list[Path]) -> tuple[int, int]:
    """Bytes of what the device tool sends: (the working tree it takes, the carried paths)."""
    listing = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
    ).stdout
    tree = 0
    for rel in filter(None, listing.split(b"\0")):
        path = repo / os.fsdecode(rel)
        if path.is_symlink() or path.is_file():
            tree += path.lstat().st_size
    carry = sum(f.lstat().st_size for c in carried for f in c.rglob("*") if not f.is_dir())
    return tree, carry


def installed(site: Path, wanted: list[str]) -> list[str]:
    """On the GPU machine, once installed: each requirement of robustreg and of the carried
    dists that the packages found on sys.path (PYTHONPATH first) do not meet, one line each."""
    lines = []
    checks = [("robustreg", r) for r in wanted]
    for dist in metadata.distributions(path=[str(site)]):
        checks += [(dist.metadata["Name"], r) for r in dist.requires or ()]
    for by, text in checks:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            found = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            lines.append(f"missing: {req.name} (needed by {by}: {req})")
            continue
        if not req.specifier.contains(found, prereleases=True):
            lines.append(f"version: {by} needs {req}, found {req.name} {found}")
    return sorted(set(lines))


def say(line: str) -> None:
    print(f"gpu-check: {line}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check_wheels", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for cmd in ("prepare", "check"):
        p = sub.add_parser(cmd, help=f"{cmd} .whl/ (prepare also downloads)")
        p.add_argument("--list", type=Path, required=True)
        p.add_argument("--dir", type=Path, required=True)
        p.add_argument("--constraints", type=Path, required=True)
        p.add_argument("--pyproject", type=Path, required=True)
        p.add_argument("--repo", type=Path, help="print what travels from this checkout")
    p = sub.add_parser("installed", help="on the GPU machine: check the installed set")
    p.add_argument("--site", type=Path, required=True)
    p.add_argument("--pyproject", type=Path, required=True)
    args = parser.parse_args(argv)

    if args.cmd == "installed":
        lines = installed(args.site, roots(args.pyproject))
        for line in lines:
            say(line)
        say(f"installed set: {len(lines)} unmet requirement(s)")
        return 0

    try:
        entries = parse_list(args.list.read_text(), args.list.name)
    except (OSError, ValueError) as err:
        say(f"error: {err}")
        return 2
    problems = pin_mismatches(entries, args.constraints.read_text())
    if not problems and args.cmd == "prepare":
        try:
            for line in sync(entries, args.dir):
                say(line)
        except subprocess.CalledProcessError as err:
            say(f"error: pip {err.cmd[4]} failed (its message above)")
            return 1
        except ValueError as err:
            say(f"error: {err}")
            return 1
    if not problems:
        more, notes = check_folder(args.dir, entries, roots(args.pyproject))
        problems += more
        for note in notes:
            say(f"note: {note}")
    for problem in problems:
        say(f"problem: {problem}")
    if problems:
        return 1
    wheels = sum(w.stat().st_size for w in args.dir.glob("*.whl"))
    say(f"{len(entries)} wheels in {args.dir}, {wheels / MIB:.1f} MiB; every requirement met")
    if args.repo is not None:
        tree, carry = travel_bytes(args.repo, [args.dir])
        total = tree + carry
        say(
            f"travels: {total / MIB:.1f} MiB of {TRAVEL_LIMIT // MIB} MiB "
            f"(working tree {tree / MIB:.1f} MiB, {args.dir.name} {carry / MIB:.1f} MiB)"
        )
        if total >= TRAVEL_LIMIT:
            say("problem: over the device tool's limit: ignore or carry less")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
