"""Trials out as CSV/JSON, the final model out as a file, and predictions from that file."""

import csv
import io
import json
import sqlite3
import shutil

import numpy as np
import optuna
import pytest
import torch
from PIL import Image

from conftest import ROOT, assert_user_error, tuner
from test_report import finished_study
from tuner.learn.data import load_data
from tuner.show.export import COLUMNS
from tuner.show.progress import snapshot
from tuner.learn.models import build_model
from tuner.keys import BEST_TEST, CONFIG, FINAL_DECISION, FINAL_TEST
from tuner.search.study import stored_config
from tuner.learn.train import heldout_metrics, predict, probabilities


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return finished_study(tmp_path_factory)


def load(folder) -> optuna.Study:
    return optuna.load_study(study_name="smoke", storage=f"sqlite:///{folder / 'tuner.db'}")


@pytest.fixture(scope="module")
def saved_model(folder):
    proc = tuner("best", "--study-name", "smoke", "--save-model", "models/best.pt", cwd=folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "saved the final model (the mean of trials" in proc.stderr and proc.stdout == ""  # the summary is not printed again
    return folder / "models" / "best.pt"


class ByHand(torch.nn.Module):
    """A saved final model rebuilt from its members' plain weights: the mean of their logits, each
    divided by its own temperature (as tuner.learn.ensemble says it is)."""

    def __init__(self, payload: dict):
        super().__init__()
        self.members, self.temperatures = torch.nn.ModuleList(), []
        for p in payload.get("members", [payload]):
            m = p["model"]
            model = build_model(m["kind"], m["channels"], m["image_size"], m["class_counts"], m["width"])
            model.load_state_dict(p["state_dict"])
            self.members.append(model)
            self.temperatures.append(p["temperature"] if "members" in payload else 1.0)

    def forward(self, x):
        return sum(m(x) / t for m, t in zip(self.members, self.temperatures)) / len(self.members)


def test_csv_rows_are_the_study_trials(folder, cli):
    proc = cli("export", "--study-name", "smoke", "--format", "csv", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    trials = load(folder).trials
    assert tuple(rows[0]) == COLUMNS
    assert [int(r["trial"]) for r in rows] == [t.number for t in trials]
    assert [float(r["own_focal_loss"]) for r in rows] == [t.user_attrs["loss"] for t in trials]
    assert "loss" not in rows[0] and "number" not in rows[0]
    assert [r["state"] for r in rows] == [t.state.name for t in trials]
    assert [float(r["value"]) if r["value"] else None for r in rows] == [t.value for t in trials]
    assert [float(r["gamma"]) for r in rows] == [t.params["gamma"] for t in trials]
    assert [float(r["average_precision"]) for r in rows] == [t.user_attrs["average_precision"] for t in trials]
    assert {r["reference"] for r in rows} == {"", "cross-entropy, gamma=0", "focal default, gamma=2, alpha=0.25"}
    assert all(r["prune_reason"] for r in rows if r["state"] == "PRUNED")
    assert [r["worker"] for r in rows] == [t.user_attrs["worker"] for t in trials] and ":" in rows[0]["worker"]  # host:index
    table = cli("status", "--study-name", "smoke", cwd=folder).stdout
    assert "worker" in table.splitlines()[2] and rows[0]["worker"] in table


def test_json_export_to_a_file(folder, cli):
    proc = cli("export", "--study-name", "smoke", "--format", "json", "--out", "trials.json", cwd=folder)
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr
    rows = json.loads((folder / "trials.json").read_text())
    trials = load(folder).trials
    assert [(r["trial"], r["state"], r["value"], r["epochs"]) for r in rows] == \
           [(t.number, t.state.name, t.value, t.user_attrs["epochs"]) for t in trials]
    # a folder that is not there yet is made, as best --save-model and report --out make theirs
    assert cli("export", "--study-name", "smoke", "--format", "json", "--out", "new/folder/t.json", cwd=folder).returncode == 0
    assert json.loads((folder / "new" / "folder" / "t.json").read_text()) == rows
    # one duration per trial: the worker's own clock, in the export, in status and in the progress lines
    whole = json.loads(cli("status", "--study-name", "smoke", "--json", cwd=folder).stdout)
    best = json.loads(cli("best", "--study-name", "smoke", "--json", cwd=folder).stdout)
    assert (whole["classes"], whole["positive_class"]) == (best["classes"], best["positive_class"]) and best["positive_class"]
    status = whole["trials"]
    assert [r["duration_s"] for r in status] == [r["duration_s"] for r in rows]
    ended = {e["trial"]: e["duration_s"] for e in snapshot(load(folder), 8)["ended"]}
    assert ended and all(ended[r["trial"]] == r["duration_s"] == load(folder).trials[r["trial"]].user_attrs["duration_s"]
                         for r in rows if r["trial"] in ended)


def test_export_user_errors(folder, saved_model, cli):
    assert_user_error(cli("export", "--study-name", "smoke", "--format", "xml", cwd=folder), "--format", "xml", "csv")
    assert json.loads(cli("export", "--study-name", "smoke", "--format", "JSON", cwd=folder).stdout)  # any case
    dash = cli("export", "--study-name", "smoke", "-o", "-", cwd=folder)
    assert dash.stdout.startswith("trial,") and not (folder / "-").exists()  # stdout, not a file named '-'
    (folder / "a-file").write_text("")
    assert_user_error(cli("export", "--study-name", "smoke", "--out", "a-file/trials.csv", cwd=folder), "a-file/trials.csv", "--out")
    assert_user_error(cli("best", "--study-name", "smoke", "--save-model", ".", cwd=folder), "--save-model", "is a folder")
    (folder / "scan.png").write_bytes(b"an image of the user's")
    assert_user_error(cli("best", "--study-name", "smoke", "--save-model", "scan.png", cwd=folder),
                      "--save-model scan.png is a file that is not a model saved by tuner")
    assert (folder / "scan.png").read_bytes() == b"an image of the user's"
    refused = cli("best", "--study-name", "smoke", "--json", "--save-model", "scan.png", cwd=folder)
    assert_user_error(refused, "--save-model scan.png")
    assert refused.stdout == ""  # no JSON for a script to read as a saved model
    assert cli("best", "--study-name", "smoke", "--save-model", str(saved_model), cwd=folder).returncode == 0  # a model: written over


def test_every_field_of_best_json_is_told_in_the_readme(folder, cli):
    best = json.loads(cli("best", "--study-name", "smoke", "--json", cwd=folder).stdout)
    readme = (ROOT / "README.md").read_text()
    told = readme[readme.index("## The results in your own code"):readme.index("## The focal loss")]
    assert [k for k in best if f"`{k}`" not in told] == []
    assert "against_final" in best["references"][0]["test"] and "`test.against_final`" in told


def _test_metrics(model, cfg, payload):
    """Test metrics at the model's own threshold and temperature, chosen on validation."""
    data = load_data(cfg.data, seed=cfg.study.seed)
    return heldout_metrics(model, data.test_x, data.test_y, payload["threshold"], payload["temperature"])


def test_saved_model_reloads_and_reproduces_the_stored_test_metrics(folder, saved_model):
    study = load(folder)
    payload = torch.load(saved_model, weights_only=True)
    settings = json.loads((folder / "models" / "best.pt.json").read_text())
    stored = study.user_attrs[FINAL_TEST]
    best = study.best_trial
    kept = sorted(t.value for t in study.trials if t.state.name == "COMPLETE" and "reference" not in t.user_attrs)[-3:]
    refs = {t.number for t in study.trials if "reference" in t.user_attrs and t.state.name == "COMPLETE"}
    assert settings["final_model"] == "ensemble" and settings["source"] == "checkpoint"
    assert settings["trials"] == payload["trials"] == stored["trials"] and payload["trials"][0] == best.number == settings["trial"]
    assert set(payload["trials"]) == refs | {t.number for t in study.trials if t.value in kept and "reference" not in t.user_attrs}
    assert settings["params"] == best.params and [m["params"] for m in settings["members"]][0] == best.params
    got = _test_metrics(ByHand(payload).eval(), stored_config(study), payload)
    assert settings["threshold"] == payload["threshold"] == stored["threshold"] and settings["test"] == stored
    for key in ("average_precision", "balanced_accuracy", "macro_f1", "recall", "precision", "ece", "ece_calibrated"):
        assert got[key] == pytest.approx(stored[key], abs=1e-6), key


def test_the_final_model_of_a_study_set_to_best_trial_is_that_trial_s_file(folder, tmp_path, cli):
    (tmp_path / "t.db").write_bytes((folder / "tuner.db").read_bytes())
    url = f"sqlite:///{tmp_path / 't.db'}"
    copy = optuna.load_study(study_name="smoke", storage=url)
    config = copy.user_attrs[CONFIG]
    copy.set_user_attr(CONFIG, {**config, "study": {**config["study"], "final_model": "best_trial"}})
    proc = cli("best", "--storage", url, "--save-model", str(tmp_path / "one.pt"), cwd=folder)
    assert proc.returncode == 0, proc.stderr
    assert f"saved the final model, trial {copy.best_trial.number}, from checkpoints, to" in proc.stderr
    payload = torch.load(tmp_path / "one.pt", weights_only=True)
    settings = json.loads((tmp_path / "one.pt.json").read_text())
    assert "members" not in payload and payload["trial"] == copy.best_trial.number and settings["final_model"] == "best_trial"
    got = _test_metrics(ByHand(payload).eval(), stored_config(copy), payload)
    assert got["average_precision"] == pytest.approx(copy.user_attrs[BEST_TEST]["average_precision"], abs=1e-9)


def test_a_study_stored_before_the_final_threshold_was_shows_the_one_its_test_check_used(folder, tmp_path, cli):
    shutil.copy(folder / "tuner.db", tmp_path / "tuner.db")
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    now = json.loads(cli("best", "--json", "--storage", url, cwd=folder).stdout)
    load(tmp_path).set_user_attr(FINAL_DECISION, None)  # as stored before the final model's threshold was
    then = cli("best", "--storage", url, cwd=folder)
    assert "not chosen" not in then.stdout, then.stdout
    assert json.loads(cli("best", "--json", "--storage", url, cwd=folder).stdout)["final_decision"] == now["final_decision"]


def test_a_test_check_made_at_another_decision_of_the_same_trials_is_not_shown_as_the_final_models(folder, tmp_path, cli):
    shutil.copy(folder / "tuner.db", tmp_path / "tuner.db")
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    study = load(tmp_path)
    decision = study.user_attrs[FINAL_DECISION]
    # as when a newer tuner decodes the images otherwise: the same trials' predictions give another temperature
    study.set_user_attr(FINAL_DECISION, {**decision, "temperature": decision["temperature"] * 1.5})
    shown = cli("best", "--storage", url, cwd=folder)
    assert "The stored test check of the final model was made at the temperature" in shown.stdout
    assert json.loads(cli("best", "--json", "--storage", url, cwd=folder).stdout)["final"] is None
    saved = cli("best", "--save-model", str(tmp_path / "m.pt"), "--storage", url, cwd=folder)
    assert saved.returncode == 0 and "are not the stored" in saved.stderr  # the save chose the run's own again, and says so
    assert json.loads((tmp_path / "m.pt.json").read_text())["test"]["temperature"] == decision["temperature"]
    assert "was made at the temperature" not in cli("best", "--storage", url, cwd=folder).stdout


def test_read_commands_never_train_and_retrain_only_when_asked(folder, tmp_path, cli):
    shutil.copy(folder / "tuner.db", tmp_path / "tuner.db")  # a copy: the retrain below rewrites its test check
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    study = load(tmp_path)
    best = study.best_trial.number
    # as in a study stored before its artifacts folder was made absolute: no model files seen from tmp_path
    config = study.user_attrs[CONFIG]
    study.set_user_attr(CONFIG, {**config, "study": {**config["study"], "artifacts": "tuner-artifacts"}})
    for args in (["best", "--save-model", "best.pt"], ["report", "--out", "report"]):
        proc = cli(*args, "--storage", url, cwd=tmp_path)
        assert_user_error(proc, f"trial {best}", f"no model file at tuner-artifacts/smoke/trial-{best}.pt",
                          "run this from the folder the study ran in", "tuner best --retrain")
    assert not (tmp_path / "tuner-artifacts").exists() and not (tmp_path / "best.pt").exists()

    proc = cli("best", "--retrain", "--json", "--save-model", "retrained.pt", "--storage", url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "retrained.pt.json").read_text())["source"] == "retrained"  # read back from the file the retrain wrote
    assert "retrained, as a model file was not found here, to" in proc.stderr
    assert (tmp_path / "tuner-artifacts" / "smoke" / f"trial-{best}.pt").is_file()
    payload = torch.load(tmp_path / "retrained.pt", weights_only=True)
    got, stored = _test_metrics(ByHand(payload).eval(), stored_config(study), payload), load(tmp_path).user_attrs[FINAL_TEST]
    assert stored["source"] == "retrained" and json.loads(proc.stdout)["test"]["source"] == "retrained"
    assert got["average_precision"] == pytest.approx(stored["average_precision"], abs=1e-6)  # this very file


def test_predict_prints_a_line_per_image(folder, saved_model, tmp_path, cli):
    cfg = stored_config(load(folder))
    data = load_data(cfg.data, seed=cfg.study.seed)
    rare = int(data.test_y.argmax())
    picks = [0, 1, rare]
    paths = []
    for i in picks:  # one name with a tab and quotes in it: the table must still parse
        paths.append(tmp_path / (f"test-{i}.png" if i else 'a\tb "c".png'))
        Image.fromarray(data.test_x[i, 0].numpy()).save(paths[-1])
    Image.fromarray(np.repeat(data.test_x[0, 0].numpy()[:, :, None], 3, axis=2)).resize((48, 48)).save(tmp_path / "rgb.jpg")
    paths.append(tmp_path / "rgb.jpg")
    proc = cli("predict", str(saved_model), *map(str, paths), cwd=folder)
    assert proc.returncode == 0, proc.stderr
    payload = torch.load(saved_model, weights_only=True)
    positive, threshold, temperature = payload["positive_class"], payload["threshold"], payload["temperature"]
    assert positive == data.positive_class == payload["classes"][1] and 0 < threshold < 1 and temperature > 0
    size = payload["model"]["image_size"]
    assert proc.stderr.strip() == (f"note: 1 image of 4 is not {size}x{size}: resized to {size}x{size} grayscale, as "
                                   "the model's training images were\n"  # rgb.jpg, 48 x 48
                                   f"threshold {threshold:.4f} on the calibrated probability of {positive!r} "
                                   "(chosen on validation for balanced_accuracy)")
    Image.new("L", (2 * size, size)).save(tmp_path / "wide.png")
    wide = cli("predict", str(saved_model), str(paths[1]), str(tmp_path / "wide.png"), cwd=folder)
    assert wide.returncode == 0 and "1 image of 2 is not" in wide.stderr and "; 1 not square is stretched to it" in wide.stderr
    assert "note:" not in cli("predict", str(saved_model), *map(str, paths[:3]), cwd=folder).stderr  # all as trained
    header, *lines = list(csv.reader(io.StringIO(proc.stdout), delimiter="\t"))
    assert header == ["path", "predicted", f"p({positive})"]
    assert [line[0] for line in lines] == list(map(str, paths))

    p1 = probabilities(predict(ByHand(payload), data.test_x[picks]).double() / temperature)  # calibrated, of the positive class
    for (path, name, prob), p in zip(lines, p1.tolist()):
        assert name == payload["classes"][int(p >= threshold)]
        assert float(prob) == pytest.approx(p, abs=1e-4)
    assert lines[3][1] in payload["classes"] and 0 <= float(lines[3][2]) <= 1

    # --threshold overrides the model's; --all prints both classes; --json is one list
    forced = cli("predict", str(saved_model), *map(str, paths[:3]), "--threshold", "1", "--all", cwd=folder)
    header, *rows = list(csv.reader(io.StringIO(forced.stdout), delimiter="\t"))
    assert header == ["path", "predicted", *(f"p({c})" for c in payload["classes"])]
    assert {r[1] for r in rows} == {payload["classes"][0]} and "from --threshold" in forced.stderr
    for r in rows:
        assert float(r[2]) + float(r[3]) == pytest.approx(1, abs=2e-4)
    as_json = json.loads(cli("predict", str(saved_model), str(paths[2]), "--json", cwd=folder).stdout)
    assert as_json[0]["predicted"] == lines[2][1]
    assert as_json[0]["probabilities"][positive] == pytest.approx(float(lines[2][2]), abs=1e-4)
    assert as_json[0]["threshold"] == threshold  # the cut the decision was made at
    assert as_json[0]["threshold_of"] == f"on the calibrated probability of {positive!r}"  # as status and export say it
    moved = json.loads(cli("predict", str(saved_model), str(paths[2]), "--json", "--threshold", "0.3", cwd=folder).stdout)
    assert moved[0]["threshold"] == 0.3


def test_predict_takes_folders_of_images(folder, saved_model, tmp_path, cli):
    images = tmp_path / "scans"
    rng = np.random.default_rng(0)
    for name in ("b.png", "a.png", "sub/c.jpg", "sub/deeper/d.png", ".hidden.png", ".cache/e.png"):
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(images / name)
    (images / "notes.txt").write_text("not an image")
    expected = [str(images / n) for n in ("a.png", "b.png", "sub/c.jpg", "sub/deeper/d.png")]
    by_folder = cli("predict", str(saved_model), str(images), "--json", cwd=folder)
    by_file = cli("predict", str(saved_model), *expected, "--json", cwd=folder)
    assert by_folder.returncode == 0, by_folder.stderr
    assert [r["path"] for r in json.loads(by_folder.stdout)] == expected
    assert json.loads(by_folder.stdout) == json.loads(by_file.stdout)


def test_predict_reads_an_image_as_the_image_folder_loader_did(tmp_path):
    from tuner.search.config import DataConfig
    from tuner.show.predict import read_image

    rng = np.random.default_rng(0)
    for cls, n in (("a", 3), ("b", 2)):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(n):  # 12-bit X-rays in 16-bit PNGs, each with its own range
            Image.fromarray(rng.integers(100 * i, 1000 + 700 * i, (40, 40)).astype(np.uint16)).save(tmp_path / "train" / cls / f"{i}.png")
    Image.fromarray(rng.integers(0, 256, (30, 20, 4), dtype=np.uint8), "RGBA").save(tmp_path / "train" / "a" / "3.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned
    Image.fromarray(rng.integers(0, 256, (24, 48, 3), dtype=np.uint8)).save(tmp_path / "train" / "b" / "2.jpg", exif=exif)
    paths = sorted((tmp_path / "train").glob("*/*.*"))
    for grayscale in (True, False):
        d = load_data(DataConfig(kind="imagefolder", root=str(tmp_path), image_size=16, grayscale=grayscale, val_fraction=0.5),
                      cache_dir=str(tmp_path / "c"))
        decoded = sorted(x.numpy().tobytes() for x in torch.cat([d.train_x, d.val_x]))
        read = sorted(read_image(path, d.channels, 16).numpy().tobytes() for path in paths)
        assert len(set(read)) == len(paths) == 7 and read == decoded  # image for image, the same pixels

def test_predict_user_errors(folder, saved_model, tmp_path, cli):
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(good)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    broken = cli("predict", str(saved_model), str(good), str(tmp_path / "broken.png"), cwd=folder)
    assert_user_error(broken, "broken.png", "cannot read image", "--skip-unreadable")
    assert broken.stdout == ""
    skipping = cli("predict", str(saved_model), str(good), str(tmp_path / "broken.png"), "--skip-unreadable", cwd=folder)
    assert skipping.returncode == 0, skipping.stderr
    assert [line.split("\t")[0] for line in skipping.stdout.splitlines()[1:]] == [str(good)]
    assert f"skipped: cannot read image {tmp_path / 'broken.png'}: " in skipping.stderr
    assert "skipped 1 of 2 images that could not be read" in skipping.stderr
    nothing = cli("predict", str(saved_model), str(tmp_path / "broken.png"), "--skip-unreadable", cwd=folder)
    assert_user_error(nothing, "none of the 1 images could be read", "broken.png")
    for flags in ([], ["--skip-unreadable"]):
        gone = cli("predict", str(saved_model), str(good), str(tmp_path / "gone.png"), *flags, cwd=folder)
        assert_user_error(gone, f"{tmp_path / 'gone.png'} does not exist; pass image files or folders of them")
    (tmp_path / "empty" / ".ipynb_checkpoints").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no image here")
    assert_user_error(cli("predict", str(saved_model), str(tmp_path / "empty"), cwd=folder), "empty", "holds no images")
    assert_user_error(cli("predict", "models/nope.pt", str(good), cwd=folder), "models/nope.pt", "does not exist")
    assert_user_error(cli("predict", f"{saved_model}.json", str(good), cwd=folder), "is the settings file written beside the model",
                      f"pass the model, {saved_model}")
    swapped = cli("predict", str(good), str(saved_model), cwd=folder)
    assert_user_error(swapped, "good.png", "not a model", "the model comes first: tuner predict MODEL.pt IMAGES")
    assert "--save-model" not in swapped.stderr  # it advised writing a model over the image
    assert_user_error(cli("predict", str(tmp_path), str(good), cwd=folder), f"{tmp_path} is a folder, not a model file")
    assert_user_error(cli("predict", str(saved_model), str(good), "--threshold", "1.5", cwd=folder), "--threshold 1.5", "probability")


def test_a_best_trial_that_is_a_reference_is_said_so_and_checked_against_the_final_model(folder, tmp_path, cli):
    (tmp_path / "t.db").write_bytes((folder / "tuner.db").read_bytes())
    url = f"sqlite:///{tmp_path / 't.db'}"
    ref = next(t for t in load(folder).trials if t.user_attrs.get("reference") == "cross-entropy, gamma=0")
    with sqlite3.connect(tmp_path / "t.db") as db:  # as if cross-entropy had scored best on validation
        db.execute("UPDATE trial_values SET value = 0.99999 WHERE trial_id = ?", (ref._trial_id,))
    proc = cli("best", "--storage", url, "--retrain", "--json", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["trial"] == ref.number and len(s["final"]["trials"]) > 1
    assert f"The best trial is reference trial {ref.number} (cross-entropy, gamma=0): no searched trial beat it on validation." in s["notes"]
    (mine,) = [r for r in s["references"] if r["trial"] == ref.number]
    assert mine["test"]["against_final"]["average_precision_std"] >= 0  # checked against the mean it is part of
    assert any(f"reference trial {ref.number} (cross-entropy, gamma=0)" in note for note in s["test_notes"])


def test_export_never_writes_over_a_database_or_a_model(folder, saved_model, tmp_path, cli):
    db = tmp_path / "copy.db"
    shutil.copy(folder / "tuner.db", db)
    before, url = db.read_bytes(), f"sqlite:///{db}"
    for target in (db, saved_model):
        assert_user_error(cli("export", "--storage", url, "--out", str(target), cwd=folder),
                          f"--out {target} is a file that is not a CSV or JSON export")
    assert db.read_bytes() == before and torch.load(saved_model, weights_only=True)
    (tmp_path / "old.csv").write_text("trial,state\n")  # an earlier export is written over
    assert cli("export", "--storage", url, "--out", str(tmp_path / "old.csv"), cwd=folder).returncode == 0
    assert (tmp_path / "old.csv").read_text().startswith("trial,state,gamma")
    assert_user_error(cli("export", "--storage", url, "--out", str(db / "trials.csv"), cwd=folder),
                      f"cannot write {db / 'trials.csv'}: {db} is a file, not a folder")
    assert_user_error(cli("best", "--storage", url, "--save-model", str(db / "m.pt"), cwd=folder), f"{db} is a file, not a folder")


def test_a_full_disk_leaves_the_saved_model_as_it_was(folder, saved_model, small_filesystem, cli):
    from conftest import fill

    target = small_filesystem / "best.pt"
    shutil.copy(saved_model, target)
    shutil.copy(f"{saved_model}.json", f"{target}.json")
    model, settings = target.read_bytes(), (small_filesystem / "best.pt.json").read_bytes()
    fill(small_filesystem)
    proc = cli("best", "--study-name", "smoke", "--save-model", str(target), cwd=folder)
    assert_user_error(proc, f"cannot write the model to {target}: No space left on device")
    assert target.read_bytes() == model and (small_filesystem / "best.pt.json").read_bytes() == settings
    assert sorted(p.name for p in small_filesystem.iterdir()) == ["best.pt", "best.pt.json", "filler"]  # no half-written file


def test_a_study_of_several_objectives_is_one_error_line(tmp_path, cli):
    url = f"sqlite:///{tmp_path / 'other.db'}"
    study = optuna.create_study(study_name="multi", storage=url, directions=["maximize", "minimize"])
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), 1.0), n_trials=2)
    for cmd in (["status"], ["status", "--json"], ["export"], ["best"], ["report", "--out", "r"]):
        assert_user_error(cli(*cmd, "--storage", url, cwd=tmp_path), "study 'multi' has 2 objectives")
    assert not (tmp_path / "r").exists()
    assert cli("list", "--storage", url, cwd=tmp_path).returncode == 0


def test_status_and_export_show_what_each_trial_trains_with(tmp_path, cli):
    from optuna.distributions import FloatDistribution
    from tuner.show.summary import shown_params

    url = f"sqlite:///{tmp_path / 'plain.db'}"
    study = optuna.create_study(study_name="plain", storage=url, direction="maximize")
    space = {"gamma": FloatDistribution(0, 5), "one_minus_beta": FloatDistribution(1e-4, 0.1, log=True)}
    # an unweighted trial (its 1 - beta only fills Optuna's space) with a tiny threshold, and a queued one
    study.add_trial(optuna.trial.create_trial(params={"gamma": 0.0, "one_minus_beta": 0.1}, distributions=space, value=0.9,
                                              user_attrs={"unweighted": True, "threshold": 4e-05}))
    study.enqueue_trial({"gamma": 2.0, "one_minus_beta": 0.001})
    status = json.loads(cli("status", "--storage", url, "--json", cwd=tmp_path).stdout)["trials"]
    rows = json.loads(cli("export", "--storage", url, "-f", "json", cwd=tmp_path).stdout)
    for got in (status, rows):
        assert [(r["state"], r["gamma"], r["beta"]) for r in got] == [("COMPLETE", 0.0, None), ("WAITING", 2.0, pytest.approx(0.999))]
    assert shown_params(study.trials[0]) == {"gamma": 0.0}
    table = cli("status", "--storage", url, cwd=tmp_path).stdout
    assert "4.00e-05" in table and "1 complete, 0 pruned, 0 running, 1 waiting, 0 failed" in table  # every state, zeros too


def test_best_says_what_is_not_checked_yet_and_keeps_what_save_model_chose(folder, tmp_path, cli):
    from tuner.keys import FINAL_DECISION

    shutil.copy(folder / "tuner.db", tmp_path / "tuner.db")
    study = load(tmp_path)
    other = next(t.number for t in study.trials if t.state.name == "COMPLETE" and t.number != study.best_trial.number)
    # as after more trials ran with no driver watching: the best trial changed since the test check
    study.set_user_attr(BEST_TEST, {**study.user_attrs[BEST_TEST], "trial": other})
    study.set_user_attr(FINAL_DECISION, None)
    study.set_user_attr(FINAL_TEST, None)  # nor of the final model's trials (one of the same trials holds its threshold)
    study.ask()  # and one still runs
    shown = cli("best", cwd=tmp_path).stdout
    assert ", 1 running, 0 failed" in shown.splitlines()[0]
    assert f"no test check of these trials yet (the stored one is of trial {other}, the best trial then)" in shown
    assert "the final model's threshold is not chosen for these trials yet" in shown
    assert cli("best", "--save-model", "m.pt", cwd=tmp_path).returncode == 0
    threshold = json.loads((tmp_path / "m.pt.json").read_text())["threshold"]
    shown = cli("best", cwd=tmp_path).stdout
    assert "not chosen" not in shown and f"the final model's threshold {threshold:.4f} on the calibrated probability" in shown


def test_predict_keeps_small_thresholds_odd_names_and_large_images_readable(folder, saved_model, tmp_path, cli):
    good = tmp_path / "cr\rname.png"  # csv quotes only its line terminator's characters: not a carriage return
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(good)
    proc = cli("predict", str(saved_model), str(good), "--threshold", "0.00004", cwd=folder)
    assert proc.returncode == 0 and "threshold 4.00e-05 on the calibrated probability" in proc.stderr, proc.stderr
    header, *rows = list(csv.reader(io.StringIO(proc.stdout, newline=""), delimiter="\t"))
    assert [r[0] for r in rows] == [str(good)] and len(rows[0]) == 3
    (tmp_path / "broken.png").write_bytes(b"not a png")
    broken = cli("predict", str(saved_model), str(tmp_path / "broken.png"), cwd=folder)
    assert_user_error(broken, f"cannot read image {tmp_path / 'broken.png'}: cannot identify image file; ")  # the path once
    big = tmp_path / "big.png"  # above PIL's warning size (89 million pixels), below its error size
    Image.new("1", (10000, 9000)).save(big)
    proc = cli("predict", str(saved_model), str(big), cwd=folder)
    assert proc.returncode == 0 and "note: Image size (90000000 pixels) exceeds limit" in proc.stderr, proc.stderr
    assert "warnings.warn" not in proc.stderr
