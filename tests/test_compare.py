"""labpnn compare: the method registry's fairness, the tuning choice, the validation split, the
generalisation plan, and a tiny comparison end to end (MNIST-1D, in this process) with the costs
each run file records."""

import json
from dataclasses import replace

import numpy as np
import pytest

from labpnn import data
from labpnn.compare import report, runner
from labpnn.compare.methods import METHODS, Method, lr_grid
from labpnn.recipe import parse_recipe

TINY = replace(runner.QUICK, name="tiny", seeds=(0,), data={"mnist1d": {"n_train": 300, "n_test": 100}},
               pib_steps={"mnist1d": 4}, bp_epochs={"mnist1d": 2}, loop_epochs={"mnist1d": 1},
               finetune_epochs={"mnist1d": 1}, lr_values=1, generalise=False)


@pytest.mark.parametrize("dataset", ["mnist1d", "mnist"])
def test_every_method_trains_the_same_network_on_the_same_data_and_seed(dataset, tmp_path):
    recipes = {n: runner.method_recipe(n, dataset, runner.FULL, 3, None, tmp_path) for n in METHODS}
    base = recipes["pib"]
    for name, r in recipes.items():
        m = METHODS[name]
        assert r["dataset"] == base["dataset"] and r["seed"] == 3 and r["measure"] == base["measure"]
        assert [(u["out"], u["activation"]) for u in r["units"]] == [(u["out"], u["activation"]) for u in base["units"]]
        assert [u["clip"] for u in r["units"]] == ([2.0, 2.0] if m.clip else [None, None])
        assert r["readout"] == base["readout"]
        if m.needs_scheme == "backprop":
            parse_recipe(r)  # valid, options included
            assert r["scheme"]["epochs"] == runner.FULL.bp_epochs[dataset]
    # "in simulation" rows: the noise-free twin, unclipped; every other row the calibrated twin, clipped
    assert {n for n, m in METHODS.items() if m.bench == "ideal"} == {"pib-sim", "backprop-in-silico"}
    assert {n for n, m in METHODS.items() if not m.clip} == {"pib-sim", "backprop-in-silico",
                                                              "backprop-deployed-as-trained"}
    assert recipes["backprop-refit"]["scheme"]["readout"] == recipes["backprop-finetune"]["scheme"]["readout"] == "refit"
    assert recipes["backprop-finetune"]["scheme"]["finetune_epochs"] == runner.FULL.finetune_epochs[dataset]


def test_the_tuning_budget_is_equal_and_picks_the_best_validation_accuracy(tmp_path):
    assert lr_grid(0.01, 3) == [0.00333, 0.01, 0.03] and lr_grid(1e-3, 1) == [1e-3]
    plan = runner.plan_tuning(TINY_3 := replace(TINY, lr_values=3), tmp_path)
    per_method: dict[str, int] = {}
    for (name, _, _), spec in plan.items():
        per_method[name] = per_method.get(name, 0) + 1
        assert spec["recipe"]["dataset"]["validation"] == TINY_3.validation  # never the test split
    assert set(per_method.values()) == {3}
    from labpnn.compare.jobs import job_id

    keys = [k for k in plan if k[0] == "pib"]
    results = {job_id(plan[k]): {"ok": True, "test_accuracy": a} for k, a in zip(keys, [0.5, 0.7, 0.7])}
    chosen = runner.choose({k: plan[k] for k in keys}, results)
    assert chosen[("pib", "mnist1d")]["lr"] == keys[1][2]  # a tie goes to the smaller rate


def test_validation_holds_out_a_stratified_share_of_the_training_split():
    full = data.load("digits", n_train=400, n_test=100)
    val = data.load("digits", n_train=400, n_test=100, validation=0.25)
    assert len(val.y_train) == 300 and len(val.y_test) == 100
    rows = {r.tobytes() for r in full.x_train}
    assert all(r.tobytes() in rows for r in val.x_test)  # taken from the training split, not the test split
    assert not {r.tobytes() for r in val.x_train} & {r.tobytes() for r in val.x_test}
    assert np.bincount(val.y_test).min() >= 8  # stratified: every class held out


def test_a_tiny_comparison_writes_its_section_and_records(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "ghost", Method("a method whose scheme is not written yet", {"name": "ghost"}))
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\nkept before\n\n<!-- compare-tiny: start -->\nOLD-SECTION\n<!-- compare-tiny: end -->"
                   "\n\nkept after\n")
    (tmp_path / "results.json").write_text(json.dumps({"sections": {"other": {"records": []}}}))
    mode = replace(TINY, methods=("pib", "backprop-deployed", "ghost"))
    result = runner.compare(mode, tmp_path / "out", workers=0, log=lambda m: None)
    assert not result.failed and set(result.skipped) == {"ghost"}
    report.write(result, "labpnn compare (test)", doc, tmp_path / "results.json", "tiny")
    text = doc.read_text()
    assert "kept before" in text and "kept after" in text and "OLD-SECTION" not in text and text.count("compare-tiny: start") == 1
    assert "| PIB on the twin (`pib`) |" in text and "Where PIB (on the twin) wins, ties and loses" in text
    assert "`ghost`: scheme 'ghost' is not registered" in text and "| skipped |" in text
    from labpnn.provenance import git_commit
    assert f"labpnn commit {git_commit()}" in text and "torch 2." in text  # what ran the jobs
    sections = json.loads((tmp_path / "results.json").read_text())["sections"]
    assert set(sections) == {"other", "tiny"}
    records = sections["tiny"]["records"]
    for r in records:
        assert {"method", "dataset", "setting", "mean", "std", "seeds", "unit"} <= set(r)
    acc = {r["method"]: r for r in records if r["table"] == "accuracy"}
    assert set(acc) == {"pib", "backprop-deployed"} and all(0 <= r["mean"] <= 100 for r in acc.values())
    assert result.tuning[("pib", "mnist1d")] == {"tried": {0.01: None}, "lr": 0.01}  # one value: no tuning run
    costs = {(r["method"], r["setting"]): r["mean"] for r in records if r["table"] == "costs"}
    # from each run file's costs record: PIB measures both splits through both units (one call per
    # split and unit: 500 rows per call) once per revision (the recipe's pib.cycles 2: 3 revisions),
    # backprop with its trained readout only the test split
    revisions = 3
    assert costs[("pib", "samples")] == revisions * 2 * 400 and costs[("backprop-deployed", "samples")] == 2 * 100
    assert costs[("pib", "calls")] == revisions * (2 * 2 + 2)   # + 2 deployments per revision
    assert costs[("backprop-deployed", "calls")] == 2 + 2
    inputs = revisions * 4 * 400 * (40 + 64)  # float32 rows into unit 0 (40 features) and unit 1 (64)
    assert inputs < costs[("pib", "bytes_sent")] < 2 * inputs  # + the deployed arrays
    assert costs[("pib", "bytes_received")] > 4 * 400 * (64 + 32)
    assert costs[("pib", "wall_s")] > 0 and costs[("pib", "peak_rss_mb")] > costs[("pib", "memory_mb")] >= 0


def test_generalisation_runs_and_their_tables(tmp_path):
    from labpnn.compare.jobs import job_id

    mode = replace(TINY, seeds=(0, 1), generalise=True, generalise_seeds=1, fractions=(0.2,))
    runs = runner.plan_runs(mode, {("pib", "mnist1d"): 0.01}, tmp_path)
    assert set(runs) == {("pib", "mnist1d", 0), ("pib", "mnist1d", 1), ("pib", "mnist1d", 0, "ood"),
                         ("pib", "mnist1d", 0, "data", 0.2)}
    assert runs[("pib", "mnist1d", 0, "ood")]["recipe"]["dataset"]["train_classes"] == list(range(8))
    assert runs[("pib", "mnist1d", 0, "data", 0.2)]["recipe"]["dataset"]["train_fraction"] == 0.2
    parse_recipe(runs[("pib", "mnist1d", 0, "ood")]["recipe"])
    fake = {("pib", "mnist1d", 0): [{"test": "noise", "setting": 5.0, "value": 50.0, "unit": "%"}],
            ("pib", "mnist1d", 1): None,
            ("pib", "mnist1d", 0, "ood"): [{"test": "ood", "setting": "held out 8,9", "value": 0.7, "unit": "AUROC"}],
            ("pib", "mnist1d", 0, "data", 0.2): [{"test": "data", "setting": 20.0, "value": 40.0, "unit": "%"}]}
    results = {job_id(runs[k]): {"ok": True, "test_accuracy": 0.5 + 0.1 * len(k), "costs": None, "generalise": g}
               for k, g in fake.items()}
    recs = runner.records(mode, runs, results)
    acc = [r for r in recs if r["table"] == "accuracy"]
    assert len(acc) == 1 and acc[0]["seeds"] == 2 and acc[0]["mean"] == pytest.approx(80.0)  # main runs only
    tables = {r["table"]: (r["setting"], r["mean"], r["unit"]) for r in recs if r["table"].startswith("generalise")}
    assert tables == {"generalise-noise": (5.0, 50.0, "%"), "generalise-ood": ("held out 8,9", 0.7, "AUROC"),
                      "generalise-data": (20.0, 40.0, "%")}
