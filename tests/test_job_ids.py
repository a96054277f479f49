"""Job ids are content hashes of what a job computes (``robustreg.plan``): a job whose id
changes is computed again, and a user's trained models and certifications are lost to it.
This pins every id the shipped configs plan, at paper, quick and CPU scale, so that a change
that moves one by accident fails here. A change meant to move ids (a method's or an attack's
``revision``) rewrites tests/data/job_ids.yaml in the same commit, where review sees which
moved::

    python tests/test_job_ids.py > tests/data/job_ids.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PINNED = REPO / "tests" / "data" / "job_ids.yaml"
SCALES = {
    "paper": [],
    "quick": ["config/quick.yaml"],
    "cpu": ["config/quick.yaml", "config/cpu.yaml"],
}


def planned_ids() -> dict[str, dict[str, list[str]]]:
    """Per scale, the sorted ids of each kind of job the shipped config plans."""
    from robustreg.cost import load_config
    from robustreg.plan import make_plan

    ids = {}
    for scale, overlays in SCALES.items():
        plan = make_plan(load_config([REPO / name for name in overlays], root=REPO))
        kinds = ("datasets", "experiments", "certifications", "attacks", "bounds")
        ids[scale] = {kind: sorted(getattr(plan, kind)) for kind in kinds}
    return ids


def test_every_planned_job_keeps_its_id():
    pinned = yaml.safe_load(PINNED.read_text())
    now = planned_ids()
    for scale in SCALES:
        for kind, ids in now[scale].items():
            moved = sorted(set(pinned[scale][kind]) ^ set(ids))
            assert not moved, (
                f"{scale} scale, {kind}: ids moved ({len(moved)}), e.g. {moved[:3]}; if meant, "
                "rewrite tests/data/job_ids.yaml (see this module's docstring)"
            )


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))  # this tree's package, also an older checkout's
    print(
        "# Every job id the shipped configs plan (tests/test_job_ids.py writes and checks it).\n"
        + yaml.safe_dump(planned_ids(), width=200),
        end="",
    )
