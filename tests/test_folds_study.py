"""A k-fold study end to end: the driver says so, trials carry their fold spread, the final model is
the fold ensemble that report, export, best and predict read."""

import csv
import io
import json
import re
import shutil

import numpy as np
import optuna
import pytest
import torch
from PIL import Image

from conftest import tuner, write_study
from tuner.keys import BEST_TEST, CONFIG


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("folds")
    proc = tuner("start-study", str(write_study(folder, n_trials=3, epochs=2, pruner="none", folds=3)), "--workers", "1", cwd=folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return folder, proc.stdout + proc.stderr


def test_the_driver_names_the_folds_and_the_final_model(folder):
    _, out = folder
    assert "3-fold validation on all" in out and "fold spread of average_precision" in out
    # every training image trains and validates, so no split into train and val images is claimed
    assert re.search(r" train images in 3 folds at 16x16 grayscale, 2 classes", out) and " val images" not in out
    assert "[worker 0] joined study" in out and re.search(r"train images in 3 folds at 16x16 grayscale, classes", out)
    assert "final model: the mean of the calibrated logits of trials" in out and "each an ensemble of the 3 fold models" in out


def test_every_epoch_stores_the_pooled_value_and_its_fold_spread(folder, cli):
    path, _ = folder
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{path / 'tuner.db'}")
    for t in study.trials:
        assert sorted(t.intermediate_values) == [1, 2] and t.user_attrs["fold_spread"] >= 0
        assert t.value == t.intermediate_values[2] == t.user_attrs["average_precision"]
    rows = list(csv.DictReader(io.StringIO(cli("export", "--study-name", "smoke", cwd=path).stdout)))
    assert rows and all(r["trial"] for r in rows)
    assert all(float(r["fold_spread"]) >= 0 for r in rows)


def test_the_ensemble_file_is_what_best_report_and_predict_read(folder, tmp_path, cli):
    path, _ = folder
    best = json.loads(cli("best", "--json", "--save-model", "best.pt", cwd=path).stdout)
    assert best["folds"] == 3 and best["final_model"].startswith(f"the mean of the calibrated logits of trials {best['trial']}, ")
    assert "each an ensemble of the 3 fold models" in best["final_model"] and best["final"]["trials"][0] == best["trial"]
    assert best["test"]["source"] == "checkpoint" and 0 <= best["test"]["balanced_accuracy"] <= 1
    image = tmp_path / "x.png"
    Image.fromarray(np.full((16, 16), 128, dtype=np.uint8)).save(image)
    proc = cli("predict", str(path / "best.pt"), str(image), cwd=path)
    assert proc.returncode == 0, proc.stderr
    header, line = proc.stdout.splitlines()
    assert header == "path\tpredicted\tp(rare)" and line.split("\t")[0] == str(image)
    report = cli("report", "--out", "report", cwd=path)
    assert report.returncode == 0, report.stderr
    text = (path / "report" / "index.html").read_text()
    assert "fold spread" in text and "ensemble of the 3 fold models" in text


def test_a_missing_trial_file_is_retrained_as_its_fold_ensemble(folder, tmp_path, cli):
    path, _ = folder
    shutil.copy(path / "tuner.db", tmp_path / "tuner.db")  # a copy: its stored test check is rewritten below
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{tmp_path / 'tuner.db'}")
    config = study.user_attrs[CONFIG]
    study.set_user_attr(CONFIG, {**config, "study": {**config["study"], "artifacts": str(tmp_path / "elsewhere")}})
    before = study.user_attrs[BEST_TEST]
    for other in (path / "tuner-artifacts" / "smoke").glob("trial-*.pt"):  # every model file but the best trial's
        if other.name != f"trial-{before['trial']}.pt":
            (tmp_path / "elsewhere" / "smoke").mkdir(parents=True, exist_ok=True)
            shutil.copy(other, tmp_path / "elsewhere" / "smoke")
    proc = cli("best", "--retrain", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    after = json.loads(proc.stdout)["test"]
    assert after["source"] == "retrained" and after["trial"] == before["trial"]
    missing = tmp_path / "elsewhere" / "smoke" / f"trial-{before['trial']}.pt"
    assert (f"note: trial {before['trial']} has no model file at {missing}; training it again with its parameters and seed "
            "(2 epochs x 3 folds)") in proc.stderr
    said = cli("best", cwd=tmp_path).stdout
    assert "(the models as their workers saved them; those whose files were not here retrained with their parameters and seed)" in said
    payload = torch.load(tmp_path / "elsewhere" / "smoke" / f"trial-{before['trial']}.pt", weights_only=True)
    assert payload["model"]["folds"] == 3
    # trials train alone (train.fuse = 1), so the same seed and batch order give the same fold models
    assert after["average_precision"] == pytest.approx(before["average_precision"], abs=1e-6)
    assert after["balanced_accuracy"] == pytest.approx(before["balanced_accuracy"], abs=1e-6)


def test_the_model_file_used_by_hand_as_the_readme_says_gives_what_predict_gives(folder, tmp_path, cli):
    from tuner.learn.data import decode_image
    from tuner.show.predict import classify, load_model

    path, _ = folder
    best = json.loads(cli("best", "--json", "--save-model", str(tmp_path / "best.pt"), cwd=path).stdout)
    rng = np.random.default_rng(0)
    images = []
    for i in range(6):
        images.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(images[-1])
    rows = json.loads(cli("predict", str(tmp_path / "best.pt"), *map(str, images), "--json", cwd=path).stdout)
    model, payload = load_model(tmp_path / "best.pt")
    decision = best["final_decision"]
    assert (payload["temperature"], payload["threshold"]) == (decision["temperature"], decision["threshold"])
    assert payload["classes"][1] == best["positive_class"] == best["classes"][1]
    m = payload["model"]
    x = torch.stack([torch.from_numpy(decode_image(p, m["channels"], m["image_size"])) for p in images])
    with torch.no_grad():
        p = torch.sigmoid(model.eval()(x.float() / 127.5 - 1).squeeze(1) / payload["temperature"])
    positive = payload["classes"][1]
    for row, q, mine in zip(rows, p.tolist(), classify(model, payload, list(map(str, images)))):
        assert row["probabilities"][positive] == pytest.approx(q, abs=1e-6) == mine["probabilities"][positive]
        assert row["predicted"] == (positive if q >= payload["threshold"] else payload["classes"][0]) == mine["predicted"]
