"""An image-folder study joined from other folders and other copies of the images: the root and the
artifacts folder are stored as absolute paths, a worker (or a resumed start-study) may point at its
own copy of the images and its own artifacts folder, and a copy that is not the same images is
refused before any trial runs."""

import html
import json
import re
import shutil

import numpy as np
import optuna
import pytest
from PIL import Image

from conftest import assert_user_error, tuner, write_study
from tuner import keys


def write_images(root):
    rng = np.random.default_rng(0)
    for split, cls, n in (("train", "normal", 40), ("train", "finding", 12), ("test", "normal", 10), ("test", "finding", 3)):
        (root / split / cls).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 120, (8, 8), dtype=np.uint8) + (100 if cls == "finding" else 0)
            Image.fromarray(pixels).save(root / split / cls / f"{i}.png")


def load(db):
    return optuna.load_study(study_name="smoke", storage=f"sqlite:///{db}")


def finished(db):
    return [t.number for t in load(db).get_trials(states=(optuna.trial.TrialState.COMPLETE,))]


@pytest.fixture(scope="module")
def created(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    write_images(home / "images")
    study_file = write_study(home, n_trials=2, epochs=1)
    proc = tuner("start-study", str(study_file), "--set", "data.kind=imagefolder", "--set", "data.root=images",
                 "--set", "data.image_size=8", "--workers", "1", cwd=home)
    assert proc.returncode == 0, proc.stderr
    return home, study_file


def test_the_root_is_stored_absolute_with_the_images_fingerprint(created):
    home, _ = created
    study = load(home / "tuner.db")
    assert study.user_attrs[keys.CONFIG]["data"]["root"] == str(home / "images")
    assert study.user_attrs[keys.CONFIG]["study"]["artifacts"] == str(home / "tuner-artifacts")
    fingerprints = study.user_attrs[keys.DATA]["fingerprints"]
    assert fingerprints["train"].startswith("52 files, sha256 ") and fingerprints["test"].startswith("13 files, sha256 ")


def test_workers_from_other_folders_and_on_other_copies_of_the_images(created, tmp_path, cli):
    home, study_file = created
    db = home / "tuner.db"
    copy = tmp_path / "copy"
    shutil.copytree(home / "images", copy)
    (home / "images").rename(home / "away")  # only the copy is here now
    try:
        # a resumed start-study elsewhere: its own workers use the root it was given, and the other
        # image size and split it was given are ignored for the stored ones (8 pixels, 20% to validation),
        # by its workers and by its own test check of models trained on 8 x 8 images alike
        proc = tuner("start-study", str(study_file), "--storage", f"sqlite:///{db}", "--set", "data.kind=imagefolder",
                     "--set", f"data.root={copy}", "--set", "data.image_size=12", "--set", "data.val_fraction=0.5",
                     "--n-trials", "3", "--workers", "1", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert ("ignoring changed data.image_size: stored 8, asked 12; data.val_fraction: stored 0.2, asked 0.5)"
                in proc.stderr)
        assert (f"study 'smoke' keeps its checkpoints and model files in {home / 'tuner-artifacts'}, "
                f"not {tmp_path / 'tuner-artifacts'}") in proc.stderr
        assert "42 train / 10 val images at 8x8 grayscale" in proc.stderr and "test set, 13 images" in proc.stdout
        # decoded once, as stored (8 pixels): the copied cache of the original folder, and the copy's own
        assert len(list((copy / ".tuner-cache").glob("imagefolder-*.pt"))) == 2
        asked = cli("start-study", str(study_file), "--storage", f"sqlite:///{db}", "--set", "data.kind=imagefolder",
                    "--set", f"data.root={copy}", "--set", "data.positive_class=normal", "--workers", "0", cwd=tmp_path)
        assert_user_error(asked, "study 'smoke' exists and detects 'finding', not 'normal'", "--study-name NEW")
        own = cli("start-study", str(study_file), "--storage", f"sqlite:///{db}", "--set", "data.kind=imagefolder",
                  "--set", f"data.root={copy}", "--artifacts", str(home / "tuner-artifacts"), "--workers", "0", cwd=tmp_path)
        assert own.returncode == 0 and "keeps its checkpoints" not in own.stderr  # --artifacts names the folder it uses
        assert len(finished(db)) == 3
        load(db).set_user_attr(keys.TARGET, 4)
        joined = tuner("worker", "--storage", f"sqlite:///{db}", "--data-root", "copy", "--max-trials", "1",
                       "--artifacts", "own", cwd=tmp_path)
        assert joined.returncode == 0, joined.stderr
        assert f"checkpoints in {tmp_path / 'own' / 'smoke'}" in joined.stderr
    finally:
        (home / "away").rename(home / "images")
    load(db).set_user_attr(keys.TARGET, 5)
    plain = tuner("worker", "--storage", f"sqlite:///{db}", "--max-trials", "1", cwd=tmp_path)  # the stored root
    assert plain.returncode == 0, plain.stderr
    assert len(finished(db)) == 5
    # the stored artifacts folder, whatever folder the driver or the worker ran in; --artifacts: its own
    assert f"checkpoints in {home / 'tuner-artifacts' / 'smoke'}" in plain.stderr
    assert sorted(p.name for p in (home / "tuner-artifacts" / "smoke").glob("trial-*.pt")) == ["trial-0.pt", "trial-1.pt",
                                                                                                 "trial-2.pt", "trial-4.pt"]
    assert [p.name for p in (tmp_path / "own" / "smoke").glob("*.pt")] == ["trial-3.pt"]
    assert not (tmp_path / "tuner-artifacts").exists()

    # readers anywhere read the stored folder; --artifacts names another copy of the model files
    elsewhere = cli("best", "--storage", f"sqlite:///{db}", "--save-model", "m.pt", "--artifacts", "own", cwd=tmp_path)
    assert_user_error(elsewhere, f"no model file at {tmp_path / 'own' / 'smoke'}/trial-", "pass --artifacts PATH")
    shutil.copy(tmp_path / "own" / "smoke" / "trial-3.pt", home / "tuner-artifacts" / "smoke")  # the files in one place
    saved = cli("best", "--storage", f"sqlite:///{db}", "--save-model", "m.pt", cwd=tmp_path)
    assert saved.returncode == 0, saved.stderr
    assert "from checkpoints, to m.pt" in saved.stderr and (tmp_path / "m.pt").is_file()


def test_a_copy_that_is_not_the_same_images_is_refused(created, tmp_path, cli):
    home, study_file = created
    db = home / "tuner.db"
    before = finished(db)
    load(db).set_user_attr(keys.TARGET, len(before) + 1)
    changed = tmp_path / "changed"
    shutil.copytree(home / "images", changed)
    (changed / "train" / "normal" / "3.png").unlink()
    worker = cli("worker", "--storage", f"sqlite:///{db}", "--data-root", str(changed), cwd=tmp_path)
    assert_user_error(worker, f"the train images under {changed} (51 files", "(52 files", "not those study 'smoke' was created with")
    resumed = cli("start-study", str(study_file), "--storage", f"sqlite:///{db}", "--set", "data.kind=imagefolder",
                  "--set", f"data.root={changed}", "--set", "data.image_size=8", "--workers", "1", cwd=tmp_path)
    assert_user_error(resumed, "not those study 'smoke' was created with")
    missing = cli("worker", "--storage", f"sqlite:///{db}", "--data-root", "nowhere", cwd=tmp_path)
    assert_user_error(missing, f"the images of study 'smoke' are not at {tmp_path / 'nowhere'} on this machine (it was "
                      f"created with those at {home / 'images'}); pass --data-root PATH")
    inside = cli("worker", "--storage", f"sqlite:///{db}", "--data-root", str(changed / "train"), cwd=tmp_path)
    assert_user_error(inside, f"--data-root {changed / 'train'} is the train/ folder of {changed}; pass --data-root {changed},")
    elsewhere = cli("start-study", str(study_file), "--storage", f"sqlite:///{db}", "--set", "data.root=gone", cwd=tmp_path)
    assert_user_error(elsewhere, f"are not at {tmp_path / 'gone'} on this machine", "; set data.root=PATH, the folder")
    assert finished(db) == before  # nothing ran, nothing stored was lost
    shutil.copytree(home / "images" / "train", tmp_path / "train-only" / "train")  # a worker never reads test/
    worker = tuner("worker", "--storage", f"sqlite:///{db}", "--data-root", "train-only", "--max-trials", "1", cwd=tmp_path)
    assert worker.returncode == 0, worker.stderr
    assert len(finished(db)) == len(before) + 1


def test_data_root_is_for_image_folder_studies_only(tmp_path, cli):
    from tuner.search.config import load_config
    from tuner.search.study import create_or_resume

    cfg = load_config(write_study(tmp_path, n_trials=2, epochs=1)).resolved(2, "rare", 40)
    create_or_resume(cfg, f"sqlite:///{tmp_path / 'tuner.db'}", "smoke")
    assert_user_error(cli("worker", "--data-root", "images", cwd=tmp_path),
                      "--data-root is for image-folder studies, but study 'smoke' uses data.kind = 'synthetic'")


def test_best_and_report_read_another_copy_of_the_images_and_refuse_other_images(tmp_path, cli):
    write_images(tmp_path / "images")
    study_file = write_study(tmp_path, n_trials=2, epochs=1)
    proc = tuner("start-study", str(study_file), "--set", "data.kind=imagefolder", "--set", "data.root=images",
                 "--set", "data.image_size=8", "--workers", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "images").rename(tmp_path / "copy")
    for cmd in (["best", "--save-model", "m.pt"], ["report", "--out", "rep"]):
        assert_user_error(cli(*cmd, cwd=tmp_path), f"the images of study 'smoke' are not at {tmp_path / 'images'}",
                          "--data-root PATH")
        assert cli(*cmd, "--data-root", "copy", cwd=tmp_path).returncode == 0
    assert (tmp_path / "m.pt").is_file() and (tmp_path / "rep" / "index.html").is_file()
    (tmp_path / "copy" / "test" / "finding" / "0.png").unlink()
    for cmd in (["best", "--save-model", "m2.pt"], ["report", "--out", "rep2"]):
        assert_user_error(cli(*cmd, "--data-root", "copy", cwd=tmp_path), "the test images under", "(12 files",
                          "not those study 'smoke' was created with")
    assert not (tmp_path / "m2.pt").exists()


def test_a_study_on_class_folders_without_a_test_split_says_it_has_no_test_check(tmp_path, cli):
    write_images(tmp_path / "images")
    shutil.move(tmp_path / "images" / "train", tmp_path / "flat")  # torchvision's layout: the class folders in the root
    study_file = write_study(tmp_path, n_trials=2, epochs=1)
    proc = tuner("start-study", str(study_file), "--set", "data.kind=imagefolder", "--set", "data.root=flat",
                 "--set", "data.image_size=8", "--workers", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "test set" not in proc.stdout and "no test check: the image folder has no test/ split" in proc.stdout
    assert "decoding" not in proc.stderr  # 52 small images: too quick to need a line
    assert load(tmp_path / "tuner.db").user_attrs[keys.DATA]["fingerprints"]["test"] == ""
    # the threshold predict will use is said all the same: the final model's, not the best trial's
    saved = cli("best", "--save-model", "m.pt", cwd=tmp_path)
    cut = json.loads((tmp_path / "m.pt.json").read_text())["threshold"]
    assert saved.returncode == 0 and f"it decides at the threshold {cut:.4f} on the calibrated probability of 'finding'" in saved.stderr
    assert f"the final model's threshold {cut:.4f} on the calibrated probability of 'finding'" in proc.stdout
    assert "  its threshold " in proc.stdout  # the best trial's own, marked as such
    assert re.search(r"^best trial \d+: average_precision of 'finding' ", proc.stdout, re.M)  # whose AP it is
    assert cli("report", "--out", "rep", cwd=tmp_path).returncode == 0
    assert f"at the threshold {cut:.4f} on the calibrated probability of 'finding'" in html.unescape((tmp_path / "rep" / "index.html").read_text())
    study, first = load(tmp_path / "tuner.db"), load(tmp_path / "tuner.db").trials[0]
    study.add_trial(optuna.trial.create_trial(params=first.params, distributions=first.distributions, value=0.1))  # joins the mean
    assert "the final model's threshold is not chosen for these trials yet" in cli("best", cwd=tmp_path).stdout


def test_wrong_image_folder_roots_are_one_line_errors(tmp_path, cli):
    write_images(tmp_path / "images")
    study_file = write_study(tmp_path, n_trials=2, epochs=1)
    imagefolder = ["--set", "data.kind=imagefolder", "--set", "data.image_size=8", "--workers", "0"]
    assert_user_error(cli("start-study", str(study_file), *imagefolder, "--set", "data.root=images/train", cwd=tmp_path),
                      f"data.root {tmp_path / 'images' / 'train'} is the train/ folder of {tmp_path / 'images'}",
                      f"set data.root to {tmp_path / 'images'}")
    assert_user_error(cli("start-study", str(study_file), *imagefolder, "--set", "data.root=images/train/normal", cwd=tmp_path),
                      "has no train/ folder", "or the class folders in")
    # a positive class that is not there fails fast, after the check under test, should that check not hold
    assert_user_error(cli("start-study", str(study_file), *imagefolder, "--set", "data.root=images/test",
                          "--set", "data.positive_class=nosuch", cwd=tmp_path),
                      f"data.root {tmp_path / 'images' / 'test'} is the test/ folder of {tmp_path / 'images'}",
                      "would train on the test images", f"set data.root to {tmp_path / 'images'}")
    assert not (tmp_path / "tuner.db").exists() or "smoke" not in optuna.get_all_study_names(f"sqlite:///{tmp_path / 'tuner.db'}")


def test_a_test_split_that_cannot_check_every_class_is_one_line_error(tmp_path, cli):
    write_images(tmp_path / "images")
    study_file = write_study(tmp_path, n_trials=2, epochs=1)
    imagefolder = ["--set", "data.kind=imagefolder", "--set", "data.image_size=8", "--set", "data.root=images",
                   "--set", "data.max_bad_fraction=0.1", "--set", "data.positive_class=nosuch", "--workers", "0"]  # no waiting
    test = tmp_path / "images" / "test"
    for png in (test / "finding").glob("*.png"):
        png.write_bytes(b"torn")  # 3 of 65 images: allowed to be unreadable, yet no test image of the class is left
    proc = cli("start-study", str(study_file), *imagefolder, cwd=tmp_path)
    note, error = proc.stderr.splitlines()  # the skipped images, then the error they lead to
    assert proc.returncode == 2 and note.startswith("note: skipped 3 unreadable images under")
    assert error.startswith(f"error: class 'finding' has no readable image in {test / 'finding'}") and "remove test/" in error
    shutil.rmtree(test)
    test.mkdir()
    assert_user_error(cli("start-study", str(study_file), *imagefolder, cwd=tmp_path),
                      f"{test} has no class folders", "(finding, normal)", "remove the empty test/ folder")
    assert not (tmp_path / "tuner.db").exists() or "smoke" not in optuna.get_all_study_names(f"sqlite:///{tmp_path / 'tuner.db'}")


def test_images_outside_any_class_folder_are_named_in_a_note(tmp_path, cli):
    write_images(tmp_path / "images")
    shutil.copy(tmp_path / "images" / "train" / "normal" / "0.png", tmp_path / "images" / "train" / "stray.png")
    study_file = write_study(tmp_path, n_trials=2, epochs=1)
    proc = cli("start-study", str(study_file), "--set", "data.kind=imagefolder", "--set", "data.root=images",
               "--set", "data.image_size=8", "--set", "data.positive_class=nosuch", "--workers", "0", cwd=tmp_path)
    assert proc.returncode == 2 and "nosuch" in proc.stderr  # stopped after the data is read
    assert (f"note: 1 image directly in {tmp_path / 'images' / 'train'} (e.g. stray.png) is in no class folder, so left out; "
            "move it into the folder of its class") in proc.stderr


def test_skipped_images_are_one_note_line_not_a_python_warning(tmp_path, cli):
    rng = np.random.default_rng(0)
    for cls, n in (("normal", 150), ("finding", 1)):
        (tmp_path / "images" / "train" / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(tmp_path / "images" / "train" / cls / f"{i}.png")
    (tmp_path / "images" / "train" / "finding" / "torn.png").write_bytes(b"not a png")  # 1 of 152: under 1%
    study_file = write_study(tmp_path, n_trials=2, epochs=1)
    proc = cli("start-study", str(study_file), "--set", "data.kind=imagefolder", "--set", "data.root=images",
               "--set", "data.image_size=8", "--workers", "0", cwd=tmp_path)
    note, error = proc.stderr.splitlines()  # the skipped image, then the error it leads to
    assert proc.returncode == 2 and error.startswith("error: class 'finding' has 1 readable image(s)")
    assert note.startswith("note: skipped 1 unreadable image under") and "torn.png (UnidentifiedImageError" in note
    assert "UserWarning" not in proc.stderr and "warnings.warn" not in proc.stderr


def test_a_new_study_reads_its_images_once(tmp_path, cli, monkeypatch):
    from tuner.learn import data

    loads = []
    real = data.load_data
    monkeypatch.setattr(data, "load_data", lambda *a, **k: loads.append(a) or real(*a, **k))  # the real load, counted
    write_images(tmp_path / "images")
    (tmp_path / "images" / "train" / "normal" / "torn.png").write_bytes(b"not a png")
    study_file = write_study(tmp_path, n_trials=2, epochs=1)
    proc = cli("start-study", str(study_file), "--set", "data.kind=imagefolder", "--set", "data.root=images",
               "--set", "data.image_size=8", "--set", "data.max_bad_fraction=0.1", "--set", "study.reference_trials=false",
               "--workers", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("note: skipped 1 unreadable image under") == 1, proc.stderr
    assert len(loads) == 1  # it loaded them a second time, with the settings as stored


def test_the_workers_start_study_spawns_do_not_repeat_its_notes_on_the_images(tmp_path):
    write_images(tmp_path / "images")
    (tmp_path / "images" / "train" / "normal" / "torn.png").write_bytes(b"not a png")
    study_file = write_study(tmp_path, n_trials=2, epochs=1)
    proc = tuner("start-study", str(study_file), "--set", "data.kind=imagefolder", "--set", "data.root=images",
                 "--set", "data.image_size=8", "--set", "data.max_bad_fraction=0.1", "--set", "study.reference_trials=false",
                 "--workers", "2", cwd=tmp_path, env={"PYTHONWARNINGS": ""})  # notes come from warnings: as a user runs it
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("skipped 1 unreadable image under") == 1, proc.stderr  # the driver's; each worker said it again
    joined = tuner("worker", "--max-trials", "1", cwd=tmp_path, env={"PYTHONWARNINGS": ""})  # one of its own says it
    assert "skipped 1 unreadable image under" in joined.stderr, joined.stderr
