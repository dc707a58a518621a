"""The study report: PNGs that decode and show something, one HTML page that needs no network."""

import html
import re
from pathlib import Path

import numpy as np
import optuna
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from conftest import assert_user_error, tuner, write_study
from tuner.search.config import load_config
from tuner.errors import UserError
from tuner.show.report import build_report
from tuner.search.study import create_or_resume, distributions

PNGS = ("plane.png", "history.png", "intermediate.png", "importance.png", "confusion.png", "pr-curve.png")
_SHARED = {}


def finished_study(tmp_path_factory) -> Path:
    """The folder (tuner.db, tuner-artifacts/) of one 6-trial, 2-epoch study, run once per session.

    test_export and test_dashboard import this too: one study for all three files keeps them fast.
    """
    if "folder" not in _SHARED:
        folder = tmp_path_factory.mktemp("finished")
        # The pruner waits for 2 complete trials: parameter importance needs them, whatever the timing.
        proc = tuner("start-study", str(write_study(folder, n_trials=6, epochs=2)), "--workers", "2",
                     "--set", "pruner.n_startup_trials=2", cwd=folder)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        _SHARED["folder"] = folder
    return _SHARED["folder"]


def assert_not_blank(path: Path, size: tuple[int, int] | None = None) -> None:
    with Image.open(path) as im:
        im.load()
        assert size is None or im.size == size, (path, im.size)
        pixels = np.asarray(im.convert("L"), dtype=np.float64)
    assert pixels.std() > 5, f"{path} looks blank (pixel std {pixels.std():.2f})"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = finished_study(tmp_path_factory)
    proc = tuner("report", "--study-name", "smoke", "--out", "report", cwd=folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "report/index.html" in proc.stdout
    return folder / "report"


def test_report_writes_every_plot_as_a_png_that_is_not_blank(report):
    assert (report / "index.html").is_file()
    for name in PNGS:
        assert_not_blank(report / name)


def test_report_page_needs_no_network(report):
    text = (report / "index.html").read_text()
    links = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", text, flags=re.IGNORECASE)
    assert len(links) == len(PNGS) and all(link.startswith("data:image/png;base64,") for link in links)
    assert not re.search(r"https?://|url\(|@import|<script|<link", text, flags=re.IGNORECASE)


def test_report_page_marks_best_and_reference_trials(report):
    text = (report / "index.html").read_text()
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{report.parent / 'tuner.db'}")
    assert "Study smoke" in text and f"Best trial {study.best_trial.number}" in text
    assert text.count('<tr class="best">') == 1 and text.count("reference: ") == 2
    assert "reference: cross-entropy, gamma=0" in text and "reference: focal default, gamma=2, alpha=0.25" in text
    assert "on the test split (100 images, as saved by the workers)" in text


def test_report_speaks_of_the_positive_class_and_the_threshold_chosen_on_validation(report):
    text = html.unescape((report / "index.html").read_text())
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{report.parent / 'tuner.db'}")
    threshold = study.best_trial.user_attrs["threshold"]
    assert f"at the threshold {threshold:.4f} on the calibrated probability of 'rare' chosen on validation (balanced_accuracy)" in text
    assert "recall of 'rare' " in text
    assert "Metric: validation average_precision of 'rare' (higher is better)" in text  # whose AP, as tuner best says
    assert f"Best trial {study.best_trial.number}</b>: average_precision of 'rare' " in text
    assert "± -" not in text  # one split: no fold spread to show
    assert "alpha is the weight of the positive class 'rare' in the loss; the other class, 'background', gets 1 - alpha" in text
    assert re.search(r"expected calibration error [0-9.]+ before and [0-9.]+ after the temperature", text)


def test_report_user_errors(report, cli):
    folder = report.parent
    (folder / "taken").write_text("")
    assert_user_error(cli("report", "--study-name", "smoke", "--out", "taken", cwd=folder), "taken", "is a file")
    assert_user_error(cli("report", "--study-name", "nope", cwd=folder), "nope", "smoke")


def _image_folder(root: Path) -> None:
    """Two classes of 16x16 PNGs under train/, no test/ folder."""
    rng = np.random.default_rng(0)
    for label, n in (("common", 12), ("rare", 4)):
        (root / "train" / label).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 120, (16, 16)) + (100 if label == "rare" else 0)
            Image.fromarray(pixels.astype(np.uint8)).save(root / "train" / label / f"{i}.png")


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_report_without_test_split_and_one_complete_trial(tmp_path, monkeypatch):
    """No model file is needed without a test split; importance is skipped; the page says why."""
    monkeypatch.chdir(tmp_path)
    _image_folder(tmp_path / "images")
    cfg = load_config(write_study(tmp_path, n_trials=2, epochs=1),
                      ["data.kind=imagefolder", f"data.root={tmp_path / 'images'}", "study.reference_trials=false"])
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    study, _ = create_or_resume(cfg, url, "folder")
    with pytest.raises(UserError, match="no completed trial"):
        build_report(study, tmp_path / "empty")
    assert not (tmp_path / "empty").exists()  # nothing to show: no empty folder left behind
    for value, state in ((0.6, optuna.trial.TrialState.COMPLETE), (None, optuna.trial.TrialState.PRUNED)):
        study.add_trial(optuna.trial.create_trial(params={"gamma": 1.0 + (value is None), "alpha": 0.5}, distributions=distributions(cfg),
                                                  value=value, state=state, intermediate_values={1: 0.6 if value else 0.2},
                                                  user_attrs={"seed": 3, "epochs": 1}))
    page = build_report(study, tmp_path / "report")
    text = page.read_text()
    assert "no test split" in text and "needs at least 2 complete trials; this study has 1" in text
    assert not (tmp_path / "report" / "confusion.png").exists() and not (tmp_path / "report" / "importance.png").exists()
    for name in ("plane.png", "history.png", "intermediate.png"):
        assert_not_blank(tmp_path / "report" / name)


def test_report_says_how_little_six_trials_show(report):
    text = html.unescape((report / "index.html").read_text())
    n = len(optuna.load_study(study_name="smoke", storage=f"sqlite:///{report.parent / 'tuner.db'}").get_trials(
        states=(optuna.trial.TrialState.COMPLETE,)))
    assert f"with {n} complete trials (fewer than 15) no surface is interpolated" in text
    assert f"From only {n} complete trials (fewer than 20): a rough guess" in text


def _plane_of(n: int, tmp_path):
    from matplotlib.collections import PathCollection
    from matplotlib.contour import ContourSet
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from tuner.show.report import plane

    cfg = load_config(write_study(tmp_path))
    rng = np.random.default_rng(n)
    trials = [optuna.trial.create_trial(params={"gamma": g, "alpha": a}, distributions=distributions(cfg), value=g * a)
              for g, a in zip(rng.uniform(0, 5, n), rng.uniform(0.05, 0.95, n))]
    fig = plane(trials, cfg, max(trials, key=lambda t: t.value))
    FigureCanvasAgg(fig).draw()
    ax = fig.axes[0]
    contours = [c for c in ax.get_children() if isinstance(c, ContourSet)]
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    return fig, ax, contours, points


@pytest.mark.parametrize("n, shaded", [(6, False), (14, False), (15, True)])
def test_plane_interpolates_only_from_15_complete_trials(tmp_path, n, shaded):
    _, ax, contours, points = _plane_of(n, tmp_path)
    assert bool(contours) == shaded
    assert sum(len(p.get_offsets()) for p in points) == n + 1  # every trial, and the best again as a star


def test_plane_legend_sits_outside_the_axes(tmp_path):
    fig, ax, _, _ = _plane_of(8, tmp_path)
    renderer = fig.canvas.get_renderer()
    legend, frame = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
    assert legend.y1 <= frame.y0 and legend.width > 0


def test_importance_ranks_the_parameters_as_the_dashboard_does(report):
    from optuna_dashboard._importance import get_param_importance_from_trials_cache
    from optuna_dashboard._inmemory_cache import InMemoryCache
    from tuner.show.report import param_importances

    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{report.parent / 'tuner.db'}")
    shown = get_param_importance_from_trials_cache(InMemoryCache(), study._storage, study._study_id, 0, study.get_trials())
    ours = param_importances(study)
    assert list(ours) == [d["name"] for d in sorted(shown, key=lambda d: -d["importance"])]
    assert [ours[d["name"]] for d in shown] == pytest.approx([d["importance"] for d in shown])


def test_plots_show_class_names_literally_and_short_enough():
    import io

    import torch

    from tuner.show.report import confusion_plot, plot_name, pr_plot

    # "$...$" is math to matplotlib: it failed on an unknown command and dropped the dollars of a price
    names = ["x$\\foo{1}$ y", "price $5 - $10", "1abnormal_" + "L" * 70]
    fig = confusion_plot([[3, 1, 0], [0, 2, 1], [1, 0, 4]], names)
    fig.savefig(io.BytesIO(), format="png")
    shown = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert shown == ["x\\$\\foo{1}\\$ y", "price \\$5 - \\$10", "1abnormal_" + "L" * 13 + "\u2026"]
    assert shown == [plot_name(n) for n in names]
    pr = pr_plot(torch.softmax(torch.randn(30, 3, generator=torch.Generator().manual_seed(0)), 1), torch.arange(30) % 3, names)
    pr.savefig(io.BytesIO(), format="png")
    assert [t.get_text().split(":")[0] for t in pr.axes[0].get_legend().get_texts()] == shown


def test_a_stopped_reference_attempt_is_shown_once_by_its_retry(tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from tuner.show.report import _table, plane

    cfg = load_config(write_study(tmp_path))
    space = distributions(cfg)
    ref = {"gamma": 0.0, "alpha": 0.5}
    made = [({}, ref, "FAIL", None, {"reference": "cross-entropy"}), ({"retry_history": [0]}, ref, "COMPLETE", 0.9, {"reference": "cross-entropy"}),
            ({}, {"gamma": 2.0, "alpha": 0.25}, "COMPLETE", 0.8, {"reference": "focal default"})]
    trials = []
    for number, (system, params, state, value, user) in enumerate(made):
        t = optuna.trial.create_trial(params=params, distributions=space, value=value, user_attrs=user, system_attrs=system,
                                      state=optuna.trial.TrialState[state])
        t.number = number
        trials.append(t)
    fig = plane(trials, cfg, trials[1])
    FigureCanvasAgg(fig).draw()
    assert sorted(a.get_text() for a in fig.axes[0].texts) == ["ref 1", "ref 2"]  # not "ref 0" over "ref 1"
    table = _table(trials, trials[1], "average_precision", "alpha")
    assert re.findall(r"<tr[^>]*><td>[^<]*</td><td>(\d+)</td>", table) == ["1", "2"]
    assert "best; reference: cross-entropy" in table  # the best trial, which is a reference, not "the best reference"


def test_reference_labels_stay_inside_the_plane(tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from tuner.show.report import plane

    cfg = load_config(write_study(tmp_path))  # gamma [0, 5], alpha [0.05, 0.95]
    corners = [{"gamma": 0.0, "alpha": 0.95}, {"gamma": 5.0, "alpha": 0.95}, {"gamma": 5.0, "alpha": 0.05}, {"gamma": 0.0, "alpha": 0.05}]
    trials = [optuna.trial.create_trial(params=p, distributions=distributions(cfg), value=0.5, user_attrs={"reference": "r"})
              for p in corners]
    for number, t in enumerate(trials):
        t.number = number
    fig = plane(trials, cfg, trials[0])
    FigureCanvasAgg(fig).draw()
    renderer, ax = fig.canvas.get_renderer(), fig.axes[0]
    frame = ax.get_window_extent(renderer)
    for text in ax.texts:
        box = text.get_window_extent(renderer)
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, text.get_text()


def test_many_class_names_under_the_confusion_matrix_do_not_overlap():
    from tuner.show.report import confusion_plot

    for names in (["eight", "five", "four", "nine", "one", "seven", "six", "three", "two", "zero"], [f"class {i}" for i in range(20)]):
        fig = confusion_plot(np.eye(len(names), dtype=int).tolist(), names)
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        boxes = [t.get_window_extent(canvas.get_renderer()) for t in fig.axes[0].get_xticklabels()]
        assert not any(a.overlaps(b) for a, b in zip(boxes, boxes[1:])), names


def test_the_pr_curve_marks_where_the_class_to_detect_is_decided():
    import torch

    from tuner.show.report import pr_plot

    probs, y = torch.softmax(torch.randn(30, 3, generator=torch.Generator().manual_seed(0)), 1), torch.arange(30) % 3
    at = {"recall": 0.8, "precision": 0.5, "class_thresholds": [1.0, 0.3, 1.0]}
    ax = pr_plot(probs, y, ["a", "finding", "c"], at, focus=1).axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "threshold 0.3000 on p(finding) / largest other (chosen on validation)" in labels
    assert [0.8, 0.5] in [c.get_offsets().tolist()[0] for c in ax.collections]
    assert len(pr_plot(probs, y, ["a", "finding", "c"], at).axes[0].collections) == 0  # no class to detect: no one point
