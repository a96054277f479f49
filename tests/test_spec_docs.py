"""The spec reference is generated from the declarations that check spec files (issue 23): the
shipped docs/table-specs.md is what ``python -m robustreg spec-docs`` writes, and every key a
declaration allows is documented with its default, accepted values and meaning."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from robustreg.cli import main
from robustreg.tables.spec import DECLARATIONS, load_spec
from robustreg.tables.spec_docs import render
from robustreg.tables.vocabulary import LAYOUTS, METRIC_DOCS, METRICS

DOCS = Path(__file__).resolve().parents[1] / "docs" / "table-specs.md"


def test_the_shipped_reference_is_the_generated_one():
    assert DOCS.read_text() == render(), (
        "docs/table-specs.md is stale: run python -m robustreg spec-docs --out docs/table-specs.md"
    )


@pytest.mark.parametrize("heading", list(DECLARATIONS))
def test_every_declared_key_has_a_line_that_says_what_it_means(heading):
    text = render()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    for f in dataclasses.fields(DECLARATIONS[heading]):
        if "need" in f.metadata:
            assert f.metadata["doc"], f"{heading}.{f.name} has no doc"
            line = next(x for x in section.splitlines() if x.startswith(f"| `{f.name}` |"))
            assert f.metadata["need"].says.split()[0] in line


def test_every_metric_and_layout_is_documented():
    assert set(METRIC_DOCS) == set(METRICS)
    text = render()
    for name in [*METRICS, *LAYOUTS]:
        assert f"| `{name}` |" in text


def test_a_key_the_reference_does_not_list_is_refused(tmp_path):
    spec = (Path(load_spec("table2_mnist").path)).read_text()
    (tmp_path / "table2_mnist.yaml").write_text(
        spec.replace("caption:", "colour: red\ncaption:", 1)
    )
    assert "`colour`" not in render()
    with pytest.raises(ValueError, match=r"top level: unknown key 'colour'"):
        load_spec("table2_mnist", tmp_path)


def test_the_command_writes_the_file(tmp_path, capsys):
    assert main(["spec-docs", "--out", str(tmp_path / "specs.md")]) == 0
    assert (tmp_path / "specs.md").read_text() == render()
    assert main(["spec-docs"]) == 0
    assert capsys.readouterr().out == render()
