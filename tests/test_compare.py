"""labpnn compare: the method registry's fairness, the tuning choice, the costs record, the
validation split, and a tiny comparison end to end (MNIST-1D, in this process)."""

import json
from dataclasses import replace

import numpy as np
import pytest

from engine_helpers import tiny_recipe, twin_bench
from labpnn import data
from labpnn.compare import report, runner
from labpnn.compare.methods import METHODS, Method, lr_grid
from labpnn.engine import Run, State
from labpnn.recipe import parse_recipe
from labpnn.runlog import RunReader

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


def test_the_run_file_records_what_the_run_cost(tmp_path):
    recipe = tiny_recipe(measure={"batch_size": 60, "repeats": 2})
    assert Run(recipe, twin_bench(tmp_path), tmp_path / "c.h5").execute() is State.DONE
    with RunReader(tmp_path / "c.h5") as reader:
        (cost,) = [r for r in reader.site_records if r.get("what") == "costs"]
    n = recipe.dataset.n_train + recipe.dataset.n_test
    assert cost["deployments"] == 2 and cost["samples"] == 2 * 2 * n  # 2 units, 2 repeats
    batches = 2 * (-(-recipe.dataset.n_train // 60) + -(-recipe.dataset.n_test // 60))
    assert cost["calls"] == 2 * batches + 2
    sent_rows = 2 * n * (64 + 16)  # inputs of unit 0 (64 features) and unit 1 (16), float32, 2 repeats
    assert cost["bytes_sent"] > 4 * sent_rows and cost["bytes_received"] > 4 * 2 * n * (16 + 8)
    assert cost["wall_s"] > 0 and cost["peak_rss_mb"] >= cost["rss_start_mb"] > 0


def test_a_tiny_comparison_writes_its_section_and_records(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "ghost", Method("a method whose scheme is not written yet", {"name": "ghost"}))
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\nkept before\n\n<!-- compare: start -->\nOLD-SECTION\n<!-- compare: end -->\n\nkept after\n")
    mode = replace(TINY, methods=("pib", "backprop-deployed", "pat", "ghost"))
    result = runner.compare(mode, tmp_path / "out", workers=0, log=lambda m: None)
    assert not result.failed and set(result.skipped) == {"ghost"}
    report.write(result, "labpnn compare (test)", doc, tmp_path / "results.json")
    text = doc.read_text()
    assert "kept before" in text and "kept after" in text and "OLD-SECTION" not in text and text.count("compare: start") == 1
    assert "| PIB on the twin (`pib`) |" in text and "Where PIB (on the twin) wins, ties and loses" in text
    assert "`ghost`: scheme 'ghost' is not registered" in text and "| skipped |" in text
    records = json.loads((tmp_path / "results.json").read_text())["records"]
    for r in records:
        assert {"method", "dataset", "setting", "mean", "std", "seeds", "unit"} <= set(r)
    acc = {r["method"]: r for r in records if r["table"] == "accuracy"}
    assert set(acc) == {"pib", "backprop-deployed", "pat"} and all(0 <= r["mean"] <= 100 for r in acc.values())
    assert result.tuning[("pib", "mnist1d")] == {"tried": {0.01: None}, "lr": 0.01}  # one value: no tuning run
    samples = {r["method"]: r["mean"] for r in records if r["table"] == "costs" and r["setting"] == "samples"}
    # PIB measures both splits through both units; backprop with its trained readout only the test split
    assert samples["pib"] == 2 * 400 and samples["backprop-deployed"] == 2 * 100
    assert samples["pat"] > samples["pib"]  # PAT measures every training step's forward pass too


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
