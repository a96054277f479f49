"""The planner: experiment identity, sharing, and config errors that name the key."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from robustreg.plan import ConfigError, make_plan, validate_config

REPO = Path(__file__).resolve().parents[1]


def merged(*overlays: dict) -> dict:
    """Snakemake's --configfile semantics: later files update earlier ones, dicts recursively."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())

    def update(base, new):
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                update(base[key], value)
            else:
                base[key] = value

    for overlay in overlays:
        update(config, copy.deepcopy(overlay))
    return config


def cell_experiments(plan, table: str) -> dict[tuple[str, float], tuple[str, ...]]:
    return {(c.row, c.sigma): c.experiments for c in plan.tables[table].cells}


def test_table2_plans_18_experiments_and_certifications():
    plan = make_plan(merged())
    cells = plan.tables["table2_mnist"].cells
    assert len(cells) == 18
    assert len({e for c in cells for e in c.experiments}) == 18
    assert len({k for c in cells for k in c.certifications}) == 18
    assert plan.tables["table2_mnist"].banner is None


def test_paper_hyperparameters_resolved_per_sigma():
    plan = make_plan(merged())
    by_key = {
        (row, sigma): plan.experiments[exp]
        for (row, sigma), (exp,) in cell_experiments(plan, "table2_mnist").items()
    }
    assert by_key["consistency", 0.25]["params"]["lbd"] == 10.0
    assert by_key["consistency", 0.5]["params"]["lbd"] == 5.0
    assert by_key["macer", 1.0]["params"]["lbd"] == 6.0
    assert by_key["macer", 0.25]["params"] == {
        "m": 16,
        "lbd": 16.0,
        "gamma": 8.0,
        "beta": 16.0,
        "deferred_epochs": 30,
    }
    schedule = by_key["gaussian", 0.5]["schedule"]
    assert (schedule["lr"], schedule["epochs"], schedule["lr_milestones"]) == (0.01, 90, [30, 60])


def test_quick_scale_ties_macer_start_and_eps_warmup_to_its_schedule():
    """Issue 20: at quick scale (4 epochs, the lr drop at 3) MACER's term starts with the
    first lr drop and SmoothAdv's eps warm-up takes 10/90 of the epochs, so both act; at
    paper scale the same config plans the paper's 30 and 10 (ids unchanged)."""
    for overlays, deferred, warmup in (((), 30, 10), ((_quick(),), 3, 1)):
        plan = make_plan(merged(*overlays))
        by_key = {
            (row, sigma): plan.experiments[exp]["params"]
            for (row, sigma), (exp,) in cell_experiments(plan, "table2_mnist").items()
        }
        assert by_key["macer", 0.5]["deferred_epochs"] == deferred
        assert by_key["smoothadv", 0.5]["warmup_epochs"] == warmup
        assert by_key["smoothadv_consistency", 1.0]["warmup_epochs"] == warmup
        table1 = plan.tables["table1_smoothadv"].cells[0].settings
        assert table1["warmup_epochs"] == (10 if not overlays else 1)


def test_stability_ids_change_only_where_batchnorm_changed_what_it_computes():
    """Issue 20: Stability now runs clean and noisy inputs in two passes. On the MNIST LeNet
    (no batch statistics) that computes what one joint batch did, and the ids stay; on Table
    7's ResNet-110 it does not, and those experiments carry the method's revision."""
    plan = make_plan(merged())
    for table, arch, revision in (
        ("table2_mnist", "lenet_mnist", None),
        ("table7_cifar10", "cifar_resnet110", 2),
    ):
        stability = [
            plan.experiments[e]
            for c in plan.tables[table].cells
            if c.row.startswith("stability")
            for e in c.experiments
        ]
        assert stability and all(exp["arch"] == arch for exp in stability)
        assert {exp.get("revision") for exp in stability} == {revision}
    gaussian = cell_experiments(plan, "table7_cifar10")["gaussian", 0.25]
    assert "revision" not in plan.experiments[gaussian[0]]
    # the id before the change
    assert "mnist-lenet_mnist-stability-s0.25-bba5de95f1" in table2_experiments(plan)


def _quick() -> dict:
    return yaml.safe_load((REPO / "config" / "quick.yaml").read_text())


@pytest.mark.parametrize(
    ("params", "schedule", "message"),
    [
        (
            {"macer": {"deferred_epochs": 4}},
            {},
            "tables.table2_mnist.rows.macer.params: deferred_epochs: MACER's robustness term "
            "would start at epoch 4 (from 0) of a 4-epoch schedule, so never",
        ),
        (
            {"macer": {"deferred_epochs": "first_lr_drop"}},
            {"lr_milestones": [4]},
            "would start at epoch 4 (from 0) of a 4-epoch schedule, so never",
        ),
        (
            {"smoothadv": {"warmup_epochs": 5}},
            {},
            "tables.table2_mnist.rows.smoothadv.params: warmup_epochs: eps would still be warming "
            "up after the last of 4 epochs (5 warm-up epochs), so it is never reached",
        ),
        (
            {"smoothadv_consistency": {"warmup_epochs": "ten"}},
            {},
            "rows.smoothadv_consistency.params: warmup_epochs: need an integer >= 0, "
            "'first_lr_drop' or a fraction 'a/b' of the epochs, got 'ten'",
        ),
        (
            {"macer": {"deferred_epochs": "first_lr_drop"}},
            {"lr_milestones": []},
            "rows.macer.params: deferred_epochs: first_lr_drop: the schedule has no lr_milestones",
        ),
    ],
)
def test_a_method_whose_defining_term_never_acts_is_refused_when_planning(
    params, schedule, message
):
    rows = {row: {"params": value} for row, value in params.items()}
    overlay = {"tables": {"table2_mnist": {"rows": rows}}, "schedules": {"mnist": schedule}}
    with pytest.raises(ConfigError) as err:
        make_plan(merged(_quick(), overlay))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def table2_experiments(plan) -> set[str]:
    return {e for c in plan.tables["table2_mnist"].cells for e in c.experiments}


def test_one_changed_hyperparameter_changes_one_experiment_only():
    before = table2_experiments(make_plan(merged()))
    overlay = {
        "tables": {
            "table2_mnist": {
                "rows": {
                    "consistency": {
                        "by_sigma": [
                            {"sigma": 0.5, "params": {"lbd": 5.0}},
                            {"sigma": 1.0, "params": {"lbd": 7.0}},
                        ]
                    }
                }
            }
        }
    }
    after = table2_experiments(make_plan(merged(overlay)))
    assert len(after - before) == 1
    assert len(before - after) == 1
    # Changing it back finds the original folders.
    assert table2_experiments(make_plan(merged())) == before


def test_defaults_spelled_out_or_not_give_the_same_experiment():
    spelled = {
        "tables": {"table2_mnist": {"rows": {"gaussian": {"method": "gaussian", "params": {}}}}}
    }
    assert set(make_plan(merged(spelled)).experiments) == set(make_plan(merged()).experiments)


def test_reduced_scale_gets_a_banner():
    quick = yaml.safe_load((REPO / "config" / "quick.yaml").read_text())
    banner = make_plan(merged(quick)).tables["table2_mnist"].banner
    assert banner.startswith("Quick scale, not comparable with the paper's numbers")
    assert "4 epochs on 500 training images" in banner
    assert "certified 100 test images with n0 = 32, n = 500" in banner
    # n = 500 certifies at most 2.21 sigma: Table 2's larger radii read 0 whatever the model
    assert (
        "With n = 500 and alpha = 0.001 CERTIFY returns no radius above 2.21 σ (0.551 at "
        "σ = 0.25, 1.1 at σ = 0.5, 2.21 at σ = 1): columns at larger radii read 0" in banner
    )


def test_banner_names_no_unreachable_radius_when_n_reaches_every_column():
    quick = yaml.safe_load((REPO / "config" / "quick.yaml").read_text())
    banner = make_plan(merged(quick)).tables["table5_atent"].banner
    assert "no radius above 1.50 σ (0.18 at σ = 0.12)" in banner
    # 3.81 sigma = 0.457 at sigma = 0.12 reaches Table 5's 0.435
    quick["certify"]["cifar10"]["n"] = 100_000
    assert "no radius above" not in make_plan(merged(quick)).tables["table5_atent"].banner


@pytest.mark.parametrize(
    ("overlay", "message"),
    [
        (
            {"tables": {"table2_mnist": {"rows": {"macer": {"params": {"lbda": 3}}}}}},
            "tables.table2_mnist.rows.macer.params: unknown parameter 'lbda'",
        ),
        (
            {"tables": {"table2_mnist": {"rows": {"typo_row": {"method": "gaussian"}}}}},
            "tables.table2_mnist.rows.typo_row: not a row of table table2_mnist",
        ),
        (
            {"tables": {"table2_mnist": {"sigmas": [0.3]}}},
            "tables.table2_mnist.sigmas: 0.3 is not a group",
        ),
        (
            {"tables": {"table2_mnist": {"schedule": "cifar"}}},
            "tables.table2_mnist.schedule: 'cifar' is not defined under schedules",
        ),
    ],
)
def test_config_errors_name_the_key(overlay, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        make_plan(merged(overlay))


@pytest.mark.parametrize(
    ("overlay", "message"),
    [
        (
            {"tables": {"table2_mnist": {"sigmas": [0.25, -1]}}},
            "tables.table2_mnist.sigmas[1]: -1 is less than or equal to the minimum of 0",
        ),
        (
            {"certify": {"mnist": {"alpah": 0.1}}},
            "certify.mnist: Additional properties are not allowed ('alpah' was unexpected)",
        ),
        (
            {"tables": {"table2_mnist": {"rows": {"gaussian": {"method": "gausian"}}}}},
            "tables.table2_mnist.rows.gaussian.method: 'gausian' is not one of",
        ),
    ],
)
def test_schema_errors_are_one_line_naming_the_key(overlay, message):
    with pytest.raises(ConfigError) as err:
        validate_config(merged(overlay), REPO / "workflow" / "schemas" / "config.schema.yaml")
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_shipped_configs_are_valid():
    schema = REPO / "workflow" / "schemas" / "config.schema.yaml"
    validate_config(merged(), schema)
    validate_config(merged(yaml.safe_load((REPO / "config" / "quick.yaml").read_text())), schema)
    validate_config(merged(yaml.safe_load((REPO / "tests" / "micro.yaml").read_text())), schema)


# ------------------------------------------------------------------ every consistency table

CONSISTENCY_RESULTS = [
    "table2_mnist",
    "table3_mnist_seeds",
    "table4_mnist_loss",
    "table5_mnist_m",
    "table6_mnist_lambda",
    "table7_cifar10",
]


def test_consistency_tables_share_identical_configs():
    plan = make_plan(merged())
    needed = {e for t in CONSISTENCY_RESULTS for c in plan.tables[t].cells for e in c.experiments}
    # Distinct training configs, counted by hand from the paper's tables:
    #   Table 2: 6 methods x 3 sigmas                                      18
    #   Table 3: the same 18 configs with seeds 1..4 (seed 0 is Table 2's)   72
    #   Table 4: MSE 5/20/50, KL 5/20/50, cross-entropy 20 (Gaussian and
    #            cross-entropy 5 are Table 2's sigma = 1.00 models)            7
    #   Table 5: m = 4 and 8 at 3 sigmas, m = 2 at sigma = 0.25 (lambda = 5
    #            everywhere; m = 2 at 0.50 and 1.00 is Table 2's)              7
    #   Table 6: lambda 1, 10, 15, 25, 30, 50 (0 = Gaussian and 5 are
    #            Table 2's; 20 is Table 4's cross-entropy 20)                  6
    #   Table 7: 7 CIFAR-10 rows x 3 sigmas                                   21
    assert len(needed) == 18 + 72 + 7 + 7 + 6 + 21
    # ... and the number of distinct resolved configs is the number of folders.
    assert len({json.dumps(plan.experiments[e], sort_keys=True) for e in needed}) == len(needed)

    t2, t3 = cell_experiments(plan, "table2_mnist"), cell_experiments(plan, "table3_mnist_seeds")
    assert set(t3) == set(t2)
    for key, (exp,) in t2.items():
        assert t3[key][0] == exp
        assert len(set(t3[key])) == 5
        assert [plan.experiments[e]["seed"] for e in t3[key]] == [0, 1, 2, 3, 4]
    t4, t5 = cell_experiments(plan, "table4_mnist_loss"), cell_experiments(plan, "table5_mnist_m")
    t6 = cell_experiments(plan, "table6_mnist_lambda")
    assert t4["xent5", 1.0] == t2["consistency", 1.0] == t6["lbd5", 1.0]
    assert t4["gaussian", 1.0] == t2["gaussian", 1.0] == t6["lbd0", 1.0]
    assert t6["lbd20", 1.0] == t4["xent20", 1.0]
    # Table 5 trains lambda = 5 at every sigma (the authors' released logs): Table 2's
    # consistency model at 0.50 and 1.00, not at 0.25, where Table 2's lambda is 10
    assert {plan.experiments[e]["params"]["lbd"] for (e,) in t5.values()} == {5.0}
    for sigma in (0.5, 1.0):
        assert t5["m2", sigma] == t2["consistency", sigma]
    assert t5["m2", 0.25] != t2["consistency", 0.25]
    for sigma in (0.25, 0.5, 1.0):
        assert t5["m8", sigma] != t2["consistency", sigma]


def test_cifar10_experiments_follow_supplement_a1_a2():
    plan = make_plan(merged())
    exps = [plan.experiments[e] for c in plan.tables["table7_cifar10"].cells for e in c.experiments]
    assert len(exps) == 21
    for exp in exps:
        assert exp["arch"] == "cifar_resnet110"
        assert exp["data"]["augment"] == "crop_flip"
        s = exp["schedule"]
        assert (s["lr"], s["epochs"], s["batch_size"], s["lr_milestones"]) == (
            0.1,
            150,
            256,
            [50, 100],
        )
    stab = {(e["params"]["lbd"], e["sigma"]) for e in exps if e["method"] == "stability"}
    assert stab == {(lbd, s) for lbd in (1.0, 2.0, 5.0, 10.0, 20.0) for s in (0.25, 0.5, 1.0)}
    cons = {e["sigma"]: e["params"]["lbd"] for e in exps if e["method"] == "consistency"}
    assert cons == {0.25: 20.0, 0.5: 10.0, 1.0: 10.0}
    mnist = [plan.experiments[e] for c in plan.tables["table2_mnist"].cells for e in c.experiments]
    assert {e["data"]["augment"] for e in mnist} == {"none"}


def test_table1_shows_smoothadv_settings_and_trains_nothing():
    plan = make_plan(merged())
    table = plan.tables["table1_smoothadv"]
    assert table.kind == "settings" and table.banner is None
    cells = {(c.row, c.sigma): c for c in table.cells}
    assert set(cells) == {("cifar10", s) for s in (0.25, 0.5, 1.0)} | {
        ("imagenet", 0.5),
        ("imagenet", 1.0),
    }
    assert cells["cifar10", 0.25].settings == {
        "method": "smoothadv",
        "attack": "PGD",
        "m": 4,
        "eps": 255 / 256,
        "steps": 10,
        "warmup_epochs": 10,
    }
    assert (cells["cifar10", 1.0].settings["eps"], cells["cifar10", 1.0].settings["m"]) == (2.0, 2)
    assert cells["imagenet", 1.0].settings["steps"] == 1
    # Every row is a trainable experiment, the ImageNet ones on the configured folder.
    assert len(cells["cifar10", 0.5].experiments) == 1
    (imagenet,) = cells["imagenet", 0.5].experiments
    assert plan.experiments[imagenet]["arch"] == "imagenet_resnet50"
    assert not any(c.certifications for c in table.cells)


def test_synthetic_cifar_banner_says_synthetic():
    quick = yaml.safe_load((REPO / "config" / "quick.yaml").read_text())
    banner = make_plan(merged(quick)).tables["table7_cifar10"].banner
    assert "synthetic CIFAR10-shaped dataset (NOT CIFAR10 images)" in banner
    # Synthetic data is never paper scale, whatever the scale key says.
    paper_scale = merged(quick, {"scale": "paper"})
    assert "synthetic" in make_plan(paper_scale).tables["table7_cifar10"].banner


def test_paper_lists_its_reports():
    plan = make_plan(merged())
    assert plan.reports("consistency")[0] == "reports/table1_smoothadv.md"
    assert len(plan.reports("consistency")) == 8
    assert plan.figures["figure1_mnist"].table == "table2_mnist"


@pytest.mark.parametrize(
    ("overlay", "message"),
    [
        (
            {"tables": {"table3_mnist_seeds": {"rows_from": "table9"}}},
            "tables.table3_mnist_seeds.rows_from: 'table9' is not a table of this config",
        ),
        (
            {"tables": {"table1_smoothadv": {"rows": {"imagenet": {"sigmas": [0.25]}}}}},
            "tables.table1_smoothadv.rows.imagenet.sigmas: 0.25 is not a group of row imagenet",
        ),
        (
            {"papers": {"consistency": {"reports": ["table2_mnist", "figure9"]}}},
            "papers.consistency.reports[1]: 'figure9' is neither a table of this config nor a "
            "figure",
        ),
        (
            {"tables": {"table1_adre": {"rows": {"imagenet_basic": {"schedule": "imagenet9"}}}}},
            "tables.table1_adre.rows.imagenet_basic.schedule: 'imagenet9' is not defined under "
            "schedules",
        ),
        (
            {
                "scale": "quick",
                "tables": {"table1_adre": {"rows": {"cifar_basic": {"certify": "cifar10"}}}},
            },
            "tables.table1_adre.rows.cifar_adre_s012_l01: its scale (data, epochs or "
            "certification) differs from row cifar_basic's",
        ),
    ],
)
def test_more_config_errors_name_the_key(overlay, message):
    with pytest.raises(ConfigError) as err:
        make_plan(merged(overlay))
    assert str(err.value).startswith(message)


def test_seed_list_and_row_seed_conflict():
    # A row seed is fine in a table without seeds ...
    make_plan(merged({"tables": {"table4_mnist_loss": {"rows": {"mse5": {"seed": 3}}}}}))
    # ... but Table 3 inherits Table 2's rows and trains its own list of seeds.
    overlay = {"tables": {"table2_mnist": {"rows": {"gaussian": {"seed": 3}}}}}
    with pytest.raises(ConfigError, match=r"table3_mnist_seeds\.rows\.gaussian\.seed"):
        make_plan(merged(overlay))


def test_adre_table1_mixes_datasets_and_shares_models_with_figure2():
    plan = make_plan(merged())
    table = plan.tables["table1_adre"]
    assert len(table.cells) == 4 + 12 + 3 + 6
    assert table.banner is None  # paper scale: Cohen et al.'s 500-image protocol, full data
    exps = {(c.row, c.sigma): plan.experiments[c.experiments[0]] for c in table.cells}
    cifar = exps["cifar_adre_s050_l02", 0.5]
    assert (cifar["arch"], cifar["data"]["dataset"], cifar["schedule"]["batch_size"]) == (
        "cifar_resnet110",
        "cifar10",
        400,
    )
    assert cifar["params"] == {"k": 8, "lbd": 0.2, "per_term": "single", "label_smoothing": 0.0}
    imagenet = exps["imagenet_adre_s100_l01", 1.0]
    assert imagenet["arch"] == "imagenet_resnet50" and imagenet["data"]["dataset"] == "imagenet"
    assert imagenet["schedule"]["processes"] == 4 and imagenet["schedule"]["lr_decay"] == "cosine"
    assert imagenet["params"]["label_smoothing"] == 0.1
    cert = plan.certifications[
        next(c for c in table.cells if c.row == "imagenet_basic").certifications[0]
    ]
    assert (cert["skip"], cert["n"], cert["alpha"]) == (100, 100000, 0.001)

    fig2 = {c.row: c for c in plan.tables["figure2_adre_models"].cells}
    by_row = {c.row: c for c in table.cells if c.sigma == 0.5}
    # the same model and the same counts, two certifiers
    assert fig2["cifar_certify"].certifications == by_row["cifar_adre_s050_l01"].certifications
    assert fig2["cifar_tcertify"].certifications == fig2["cifar_certify"].certifications
    assert fig2["cifar_tcertify"].logs()[0].endswith("/tcertify.tsv")
    assert fig2["cifar_certify"].logs()[0].endswith("/certify.tsv")
    assert fig2["imagenet_tcertify"].experiments == by_row["imagenet_adre_s050_l005"].experiments


def test_mixed_table_banner_states_each_datasets_scale():
    quick = yaml.safe_load((REPO / "config" / "quick.yaml").read_text())
    banner = make_plan(merged(quick)).tables["table1_adre"].banner
    assert banner.startswith("CIFAR10 rows: Quick scale")
    assert "ImageNet rows: Quick scale" in banner
    assert "synthetic ImageNet-shaped dataset (NOT ImageNet images), cropped to 64x64" in banner


def test_imagenet_dataset_ids_name_views_and_synthetic_shape():
    from robustreg.plan import dataset_id

    folder = {"source": "folder", "root": "/data/imagenet", "crop": 224, "resize": 256}
    assert dataset_id("imagenet", folder) == "imagenet"
    assert dataset_id("imagenet", folder | {"crop": 128, "resize": 146}) == (
        "imagenet-crop128-resize146"
    )
    synthetic = folder | {
        "source": "synthetic",
        "synthetic": {"train": 20, "test": 10, "seed": 0, "classes": 4, "size": 40},
        "crop": 32,
        "resize": 36,
    }
    assert dataset_id("imagenet", synthetic) == (
        "imagenet-synthetic-20-10-c4-40px-seed0-crop32-resize36"
    )


def test_unknown_certifier_is_refused_by_the_schema():
    schema = REPO / "workflow" / "schemas" / "config.schema.yaml"
    overlay = {"tables": {"figure2_adre_models": {"rows": {"cifar_tcertify": {"certifier": "x"}}}}}
    with pytest.raises(ConfigError, match="certifier"):
        validate_config(merged(overlay), schema)


@pytest.mark.parametrize(
    "table",
    ["table1_smoothadv", "table2_mnist", "table3_mnist_seeds", "table1_atent", "table1_gradreg"],
)
def test_cells_command_writes_the_plans_cells_file(tmp_path, table):
    """The table_cells rule passes ``cells_document`` as JSON to `python -m robustreg cells`:
    the file it writes is the one ``write_cells_document`` writes in process (settings, results,
    seeded, attacks and robustness tables)."""
    from robustreg.cli import main
    from robustreg.plan import cells_document, write_cells_document

    plan = make_plan(merged(yaml.safe_load((REPO / "config" / "quick.yaml").read_text())))
    path = tmp_path / "results" / "tables" / f"{table}.cells.yaml"
    doc = cells_document(plan.tables[table], path)
    assert main(["cells", "--json", json.dumps(doc), "--out", str(path)]) == 0
    written = path.read_text()
    write_cells_document(cells_document(plan.tables[table], path), path)
    assert written == path.read_text()
    loaded = yaml.safe_load(written)
    assert loaded["table"] == plan.tables[table].spec and "Quick scale" in loaded["banner"]
    assert len(loaded["cells"]) == len(plan.tables[table].cells)


@pytest.mark.parametrize(
    ("argument", "message"),
    [("{", "--json: not JSON"), ('{"cells": []}', "--json: need an object with 'table'")],
)
def test_cells_command_refuses_a_bad_document_in_one_line(tmp_path, capsys, argument, message):
    from robustreg.cli import main

    assert main(["cells", "--json", argument, "--out", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"robustreg cells: error: {message}") and "\n" not in err
    assert not (tmp_path / "c.yaml").exists()


# ------------------------------------------------------------ hostile and absurd config values

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def refused(config: dict) -> str:
    """The one-line ConfigError that planning ``config`` gives, as the Snakefile plans it."""
    with pytest.raises(ConfigError) as err:
        validate_config(config, SCHEMA)
        make_plan(config)
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize(
    ("overlay", "where"),
    [
        (
            {"tables": {"table2_mnist": {"arch": "lenet_mnist$(touch PWNED)"}}},
            "tables.table2_mnist",
        ),
        (
            {"tables": {"table1_adre": {"rows": {"imagenet_basic": {"arch": "x; touch PWNED"}}}}},
            "tables.table1_adre.rows.imagenet_basic",
        ),
        ({"tables": {"table1_atent": {"arch": "resnet18"}}}, "tables.table1_atent"),
    ],
)
def test_arch_is_one_of_the_registered_architectures(overlay, where):
    # the arch is part of the experiment id, a folder name and a shell word
    message = refused(merged(overlay))
    assert message.startswith(f"{where}.arch: ") and "is not one of [" in message
    assert "'lenet_mnist'" in message and "'cifar_resnet110'" in message


def test_schema_lists_exactly_the_registered_architectures():
    from robustreg.models import architectures

    schema = yaml.safe_load(SCHEMA.read_text())
    assert set(schema["$defs"]["arch"]["enum"]) == set(architectures())


@pytest.mark.parametrize(
    ("overlay", "where"),
    [
        ({"papers": {"x$(touch PWNED)": {"title": "t", "reports": ["table2_mnist"]}}}, "papers"),
        ({"tables": {"../t": {"rows_from": "table2_mnist", "seeds": [0]}}}, "tables"),
        ({"schedules": {"a b": {}}}, "schedules"),
        ({"certify": {"-n": {}}}, "certify"),
        ({"evaluation": {"e;": {}}}, "evaluation"),
        ({"attacks": {"a/b": {"kind": "none"}}}, "attacks"),
        ({"bounds": {"`b`": {"norm": "l2", "eps": [1.0]}}}, "bounds"),
        ({"tables": {"table2_mnist": {"spec": "../../x"}}}, "tables.table2_mnist.spec"),
        ({"tables": {"table3_mnist_seeds": {"rows_from": "t$x"}}}, "tables.table3_mnist_seeds"),
        ({"tables": {"table2_mnist": {"schedule": "m n"}}}, "tables.table2_mnist.schedule"),
        (
            {"tables": {"table1_atent": {"rows": {"sgd": {"evaluation": "e|x"}}}}},
            "tables.table1_atent.rows.sgd.evaluation",
        ),
    ],
)
def test_names_are_letters_digits_and_underscores(overlay, where):
    message = refused(merged(overlay))
    assert message.startswith(where) and "does not match '^[A-Za-z0-9][A-Za-z0-9_]*$'" in message


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        # as a user writes them (PyYAML reads 1e23 and 1.0e23 as strings, 1.0e+23 as a float)
        ("tables: {table2_mnist: {sigmas: [0.25, .inf]}}", "tables.table2_mnist.sigmas[1]: inf"),
        ("certify: {mnist: {alpha: .nan}}", "certify.mnist.alpha: nan is not a finite number"),
        ("attacks: {pgd40_l2_mnist: {eps: .nan}}", "attacks.pgd40_l2_mnist.eps: nan is not"),
        ("tables: {table2_mnist: {rows: {macer: {params: {lbd: -.inf}}}}}", "tables.table2_"),
        ("seed: 1e23", "seed: '1e23' is not of type 'integer'"),
        ("seed: 1.0e+23", "seed: 1e+23 is not of type 'integer'"),
        ("seed: 100000000000000000000000", "seed: 100000000000000000000000 is greater than"),
        ("seed: 4294967296", "seed: 4294967296 is greater than the maximum of 4294967295"),
        ("tables: {table3_mnist_seeds: {seeds: [0, -1]}}", "tables.table3_mnist_seeds.seeds[1]"),
        ("schedules: {mnist: {batch_size: 1e12}}", "schedules.mnist.batch_size: '1e12' is not"),
        (
            "schedules: {mnist: {batch_size: 1.0e+12}}",
            "schedules.mnist.batch_size: 1000000000000.0",
        ),
        ("schedules: {mnist: {batch_size: 1000000000000}}", "schedules.mnist.batch_size: 100000"),
        ("schedules: {mnist: {epochs: 3.0}}", "schedules.mnist.epochs: 3.0 is not of type"),
        ("certify: {mnist: {batch_size: 2000000}}", "certify.mnist.batch_size: 2000000 is greater"),
        ("certify: {mnist: {n: 1000000000000}}", "certify.mnist.n: 1000000000000 is greater than"),
        ("certify: {mnist: {n0: 100000001}}", "certify.mnist.n0: 100000001 is greater than"),
        ("evaluation: {mnist: {skip: 100000000000000000000}}", "evaluation.mnist.skip: 10000"),
        ("data: {imagenet: {resize: 100000}}", "data.imagenet.resize: 100000 is greater than"),
        ("data: {mnist: {test_size: 5000}}", "data.mnist.test_size: 5000 is greater than"),
    ],
)
def test_absurd_values_are_one_line_errors_before_any_job(typed, message):
    assert refused(merged(yaml.safe_load(typed))).startswith(message)


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("seed=1e23", "seed: 1e+23 is not of type 'integer'"),
        ("seed=nan", "seed: nan is not a finite number"),
        ("seed=3.0", "seed: 3.0 is not of type 'integer'"),
    ],
)
def test_snakemake_config_arguments_are_checked_as_typed(argument, message):
    from snakemake.cli import parse_config

    # `snakemake --config seed=1e23` parses the value as Snakemake's own parser does
    assert refused(merged(parse_config([argument]))) == message


def test_ids_of_valid_configs_are_unchanged():
    """Checks on names and values must not move an id: a new id retrains everything a user
    has. These were computed before the checks existed."""
    plan = make_plan(merged())
    table2 = plan.tables["table2_mnist"].cells[0]
    assert table2.certifications == (
        "mnist-lenet_mnist-gaussian-s0.25-ffe23d415e/n100000-36d4d2cc7f",
    )
    assert plan.tables["table1_adre"].cells[0].certifications == (
        "cifar10-cifar_resnet110-gaussian-s0.12-56beba614d/n100000-9f0171a0b5",
    )
    assert plan.tables["table1_atent"].cells[0].attacks["pgd40"] == (
        "mnist-small_cnn_mnist-standard-51b9777e92/pgd40_l2_mnist-ad5aa554bf"
    )
    omega = plan.tables["table2_gradreg"].cells[0].files["omega"]
    # moved once on purpose (was gradreg_l2-097234f28e): the margin loss of a bounds job became
    # section 2.2's, on label probabilities (outputs: softmax), so the old bounds mean another thing
    assert omega == (
        "results/bounds/cifar10-resnext34_2x32_cifar-standard-c0be1408b2/gradreg_l2-d98e9eeceb/"
        "bounds.json",
    )
    quick = make_plan(merged(yaml.safe_load((REPO / "config" / "quick.yaml").read_text())))
    # moved once on purpose (was ...-1003bafeea): the eps warm-up became a share of the
    # schedule (10/150), one epoch of the quick scale's 2 instead of a never-ended 10
    assert "cifar10-cifar_resnet110-adre_adv-s0.25-d44db1a7bb" in quick.experiments


def test_planning_a_config_with_attack_and_bounds_tables_imports_no_torch():
    """Every snakemake call, SLURM job and cells job plans (issue 19): the whole plan of the
    micro configuration, attack and robustness tables included, imports neither torch nor an
    attack library, nor scipy.stats."""
    code = (
        "import sys\n"
        "from robustreg.cost import load_config\n"
        "from robustreg.plan import cells_document, make_plan\n"
        f"plan = make_plan(load_config([{str(REPO / 'tests' / 'micro.yaml')!r}], {str(REPO)!r}))\n"
        "assert plan.attacks and plan.bounds\n"
        "for name, table in plan.tables.items():\n"
        "    cells_document(table, f'reports/{name}.cells.yaml')\n"
        "heavy = ('torch', 'timm', 'torchvision', 'foolbox', 'art', 'pyautoattack',"
        " 'scipy.stats')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_attack_kind_whose_meaning_changed_gets_new_job_ids():
    # cw_l2_min's revision 2 counts Foolbox's unreached zero start as not found, and
    # autoattack's names the sub-attack that broke each image: their outcomes from the earlier
    # code must not be reused, every other kind's ids stay as they were
    plan = make_plan(merged())
    revised = {key: job for key, job in plan.attacks.items() if "revision" in job}
    kinds = {"cw_l2_min", "autoattack"}
    assert revised and {job["attack"]["kind"] for job in revised.values()} == kinds
    assert {job["revision"] for job in revised.values()} == {2}
    assert all(
        job["attack"]["kind"] not in kinds
        for key, job in plan.attacks.items()
        if key not in revised
    )


def test_bounds_take_the_margin_on_label_probabilities_by_default():
    # section 2: f "takes input vectors x to label probabilities"; section 2.2's loss is on f
    plan = make_plan(merged())
    assert plan.bounds and {job["bounds"]["outputs"] for job in plan.bounds.values()} == {"softmax"}


def test_attacks_tables_say_which_rows_early_stopping_selected():
    # the ATENT paper early-stops some models and not others: each table names them, how
    # they were selected, and that the rest are last epochs (at every scale, not a banner)
    plan = make_plan(merged())
    (note,) = plan.tables["table3_atent"].notes
    assert note.startswith("Checkpoint selection (early stopping) for PGD-AT (E): the epoch")
    assert "10-step ℓ∞ PGD at ε = 0.03137 on 1,000 training images held out" in note
    assert "ℓ∞ ATENT: the epoch of highest accuracy under 20-step" in note
    assert "PGD-AT," not in note and note.endswith("Every other row is its model's last epoch.")
    (note,) = plan.tables["table6_atent"].notes  # both rows attack the early-stopped ATENT
    assert "last epoch" not in note
    assert plan.tables["table2_mnist"].notes == []


@pytest.mark.parametrize(
    ("row", "params", "message"),
    [
        # a string where a number belongs used to stop planning with a TypeError traceback
        ("macer", {"lbd": "x"}, "macer.params: lbd: need lbd >= 0, got 'x'"),
        ("consistency", {"eta": True}, "consistency.params: eta: need a number >= 0, got True"),
        ("smoothadv", {"steps": 2.5}, "smoothadv.params: steps: need an integer >= 1, got 2.5"),
        ("stability", {"lbd": [2]}, "stability.params: lbd: need lbd >= 0, got [2]"),
    ],
)
def test_a_hyperparameter_of_the_wrong_type_is_refused_in_one_line(row, params, message):
    overlay = {"tables": {"table2_mnist": {"rows": {row: {"params": params}}}}}
    assert refused(merged(overlay)) == f"tables.table2_mnist.rows.{message}"
