"""A study report: PNG plots and one HTML page that holds them (base64), readable offline.

>>> study = optuna.load_study(study_name="smoke", storage="sqlite:///tuner.db")  # doctest: +SKIP
>>> build_report(study, Path("report"))
PosixPath('report/index.html')
"""

import base64
import html
import math
import warnings
from pathlib import Path

import numpy as np
import optuna
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from optuna.trial import TrialState
from sklearn.metrics import average_precision_score, precision_recall_curve

from tuner import keys
from tuner.learn.checkpoints import decision_cut
from tuner.errors import UserError
from tuner.show.results import final_model, study_data
from tuner.show.summary import (NOT_CHOSEN, best_trial, decision_words, few_to_find, final_decision, final_label, final_members, final_words, margin_notes,
                                metric_words, notes_on_test)
from tuner.search.config import StudyConfig
from tuner.search.study import counts, describe_trial, queued_again, stored_config
from tuner.show.progress import counts_words, cut_text
from tuner.learn.train import heldout_metrics, predict, probabilities
from tuner.learn.weights import focus_class

TOP = 10
MIN_FOR_CONTOUR = 15  # fewer complete trials leave the interpolation mostly invented
MIN_FOR_IMPORTANCE = 20  # below this, importance is stated with a caveat


def build_report(study: optuna.Study, out: Path, cfg: StudyConfig | None = None) -> Path:
    """Write the PNGs and index.html into ``out``; returns the page's path. ``cfg``: the study's
    stored settings unless given (with another copy of its images, say)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder for the report (it is created when missing)")
    cfg = cfg or stored_config(study)
    best = best_trial(study)  # before the folder: a study with nothing to show leaves no empty folder behind
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the report folder {out}: {e.strerror}; pass a writable --out folder")
    trials = study.get_trials(deepcopy=False)
    classes, positive = study.user_attrs.get(keys.DATA, {}).get("classes"), cfg.data.positive_class
    words = metric_words(cfg.study.metric, classes, positive)
    metric = metric_words(cfg.study.metric, classes, positive and plot_name(positive))  # the plots' label
    sections = [
        (f"Objective over gamma x {'alpha' if _second(cfg) == 'alpha' else '1 - beta'}", _save(out, "plane.png", plane(trials, cfg, best, metric)), _alpha_note(study, cfg)),
        ("Optimization history", _save(out, "history.png", history(trials, metric)), ""),
        ("Intermediate values per epoch", _save(out, "intermediate.png", intermediate(trials, metric)),
         "Pruned trials are dashed red lines ending in a cross."),
    ]
    fig, note = importance(study)
    sections.append(("Parameter importance", _save(out, "importance.png", fig) if fig else None, note))

    data = study_data(study, cfg)
    few = few_to_find(cfg, data)
    if data.test_x is None:
        test_note = ("The data has no test split (no test/ folder under data.root), so the final model's "
                     "confusion matrix and precision-recall curve are not shown. " + _decision_note(study, cfg, best, data))
        test_sections = []
    else:
        model, payload, source = final_model(study, cfg, data)
        name = final_label(payload["trials"]).capitalize() if "members" in payload else f"Best trial {best.number}"
        threshold, temperature = decision_cut(payload), payload.get("temperature", 1.0)
        logits = predict(model, data.test_x).float()  # once: the final model may be many members
        focus = focus_class(cfg, data.classes)
        s = heldout_metrics(model, data.test_x, data.test_y, threshold, temperature, logits=logits, focus=focus)
        probs = probabilities(logits.double() / temperature).float()
        made = "as saved by the workers" if source == "checkpoint" else "retrained with the trials' parameters and seeds"
        if data.positive_class:
            test_note = (f"{name} on the test split ({len(data.test_y)} images, {made}), at the threshold "
                         f"{cut_text(s['threshold'])} on the calibrated probability of {data.positive_class!r} chosen on validation "
                         f"({cfg.study.operating_point}): average precision {s['average_precision']:.4f}, balanced accuracy "
                         f"{s['balanced_accuracy']:.4f}, recall of {data.positive_class!r} {s['recall']:.4f}, precision {s['precision']:.4f}; expected "
                         f"calibration error {s['ece']:.4f} before and {s['ece_calibrated']:.4f} after the temperature {temperature:.3f}.")
        else:
            test_note = (f"{name} on the test split ({len(data.test_y)} images, {made}), {decisions_words(cfg, s, data.classes)}: "
                         f"macro average precision {s['average_precision']:.4f}, balanced accuracy {s['balanced_accuracy']:.4f}, "
                         f"macro-F1 {s['macro_f1']:.4f}"
                         + (f", AP of {data.classes[focus]!r} {s['class_average_precision']:.4f}, recall of {data.classes[focus]!r} "
                            f"{s['recall']:.4f}, precision {s['precision']:.4f}" if focus is not None else "")
                         + f"; expected calibration error (top label) {s['ece']:.4f} before and "
                         f"{s['ece_calibrated']:.4f} after the temperature {temperature:.3f}.")
        test_sections = [("Test confusion matrix", _save(out, "confusion.png", confusion_plot(s["confusion_matrix"], data.classes)), ""),
                         ("Test precision-recall curve", _save(out, "pr-curve.png", pr_plot(probs, data.test_y, data.classes, s, focus)), "")]
    if few:
        test_note += f" Note: {few[0].upper()}{few[1:]}"
    page = out / "index.html"
    page.write_text(_page(study, cfg, best, trials, words, sections, test_note, test_sections))
    return page


def _decision_note(study, cfg, best, data) -> str:
    """Where the final model decides, from what the study stored (no model file is read)."""
    members = final_members(study, cfg)
    if len(members) == 1:
        cut = best.user_attrs.get(keys.THRESHOLD if data.num_classes == 2 else keys.CLASS_THRESHOLDS)
        name, temperature = f"Best trial {best.number}, the final model", best.user_attrs.get(keys.TEMPERATURE, 1.0)
    elif decision := final_decision(study, members):
        cut, temperature = decision["threshold"], decision["temperature"]
        cut = cut if data.num_classes == 2 else [decision["class_thresholds"][c] for c in data.classes]
        name = final_label(decision["trials"]).capitalize()
    else:
        return NOT_CHOSEN[0].upper() + NOT_CHOSEN[1:] + "."
    if cut is None:
        return ""
    words = decision_words(cut, data.classes, data.positive_class or cfg.data.positive_class, cfg.study.operating_point)
    return (f"{name} (what tuner best --save-model writes) decides {words}, "
            f"with the temperature {temperature:.3f}.")


def decisions_words(cfg, metrics: dict, classes: list[str]) -> str:
    """How a model of more than two classes decides, in words, with its thresholds."""
    t = metrics.get("class_thresholds")
    return "argmax decisions" if not t else f"deciding {decision_words(t, classes, cfg.data.positive_class, cfg.study.operating_point)}"


def _alpha_note(study, cfg) -> str:
    classes = study.user_attrs.get(keys.DATA, {}).get("classes", [])
    n = sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    shading = (f" The shading interpolates the {n} complete trials." if n >= MIN_FOR_CONTOUR else
               f" Each point is one trial, coloured by its value; with {n} complete trials (fewer than {MIN_FOR_CONTOUR}) "
               "no surface is interpolated between them.")
    if cfg.search.alpha_mode == "class_balanced":
        return ("alpha is not searched here: each class is weighted by its effective number of samples (Cui et al. 2019), "
                "w_c proportional to (1 - beta) / (1 - beta^n_c), largest weight 1; the search tunes beta." + shading)
    if len(classes) == 2:
        positive = cfg.data.positive_class or classes[1]
        other = next(c for c in classes if c != positive)
        return (f"alpha is the weight of the positive class {positive!r} in the loss; the other class, {other!r}, "
                "gets 1 - alpha. A small alpha is not odd: gamma already focuses training on the hard images." + shading)
    if cfg.data.positive_class in classes:
        return (f"alpha is the weight of the class to detect, {cfg.data.positive_class!r}, in the loss; "
                "the other classes get 1 - alpha." + shading)
    counts = study.user_attrs.get(keys.DATA, {}).get("class_counts") or []
    rarest = f", {classes[counts.index(min(counts))]!r}," if len(counts) == len(classes) > 0 else ""
    return f"alpha is the weight of the rarest class{rarest} in the loss; the other classes get 1 - alpha." + shading


def _save(out: Path, name: str, fig: Figure) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(out / name, dpi=100)
    return out / name


def _second(cfg) -> str:
    """The searched parameter beside gamma: alpha, or 1 - beta for class-balanced weights."""
    return "one_minus_beta" if cfg.search.alpha_mode == "class_balanced" else "alpha"


def _finished(trials, state=TrialState.COMPLETE, second="alpha"):
    return [t for t in trials if t.state == state and "gamma" in t.params and second in t.params]


def _last(t) -> float | None:
    return t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None


def plane(trials, cfg, best, metric: str | None = None) -> Figure:
    """Complete trials coloured by value (over a filled contour from MIN_FOR_CONTOUR of them on);
    pruned as grey crosses; the legend outside the axes, where it hides no point."""
    fig = Figure(figsize=(6.4, 5))
    ax = fig.add_subplot()
    y_name, metric = _second(cfg), metric or cfg.study.metric
    done = [t for t in _finished(trials, second=y_name) if t.value is not None and math.isfinite(t.value)]
    g, a, v = (np.array([t.params["gamma"] for t in done]), np.array([t.params[y_name] for t in done]),
               np.array([t.value for t in done]))
    if len(done) >= MIN_FOR_CONTOUR and np.ptp(v) > 0:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax.tricontourf(g, a, v, levels=12, cmap="viridis", alpha=0.45)
        except (ValueError, RuntimeError):
            pass  # collinear or repeated points: the scatter alone still shows them
    if done:
        points = ax.scatter(g, a, c=v, cmap="viridis", edgecolors="black", s=60, zorder=3, label="complete")
        fig.colorbar(points, ax=ax, label=metric)
    pruned = _finished(trials, TrialState.PRUNED, y_name)
    if pruned:
        ax.scatter([t.params["gamma"] for t in pruned], [t.params[y_name] for t in pruned], marker="x", c="grey",
                   s=50, zorder=3, label="pruned")
    if y_name in best.params:
        ax.scatter([best.params["gamma"]], [best.params[y_name]], marker="*", s=300, c="red", edgecolors="black", zorder=4, label="best")
    if y_name == "alpha":
        ax.set(ylabel="alpha", ylim=_pad(cfg.search.alpha))
    else:
        lo, hi = cfg.search.beta
        ax.set(ylabel="1 - beta (class-balanced weights)", yscale="log", ylim=((1 - hi) / 1.3, (1 - lo) * 1.3))
    ax.set(xlabel="gamma", xlim=_pad(cfg.search.gamma), title=f"{metric} over gamma x {'alpha' if y_name == 'alpha' else '1 - beta'}")
    again = queued_again(trials)  # a stopped attempt: its retry is the reference now
    for t in trials:
        if keys.REFERENCE in t.user_attrs and "gamma" in t.params and y_name in t.params and t.number not in again:
            unused = " (no class weights)" if t.user_attrs.get(keys.UNWEIGHTED) else ""  # its stored value is a placeholder
            xy = (t.params["gamma"], t.params[y_name])
            right, top = ax.transAxes.inverted().transform(ax.transData.transform(xy)) > 0.8  # keep the label inside
            ax.annotate(f"ref {t.number}{unused}", xy, textcoords="offset points", xytext=(-6 if right else 6, -6 if top else 6),
                        ha="right" if right else "left", va="top" if top else "bottom")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize="small", frameon=False)
    fig.tight_layout()
    return fig


def _pad(lim):
    lo, hi = lim
    pad = (hi - lo) * 0.05 or 0.05
    return lo - pad, hi + pad


def history(trials, metric) -> Figure:
    fig = Figure(figsize=(6.4, 4))
    ax = fig.add_subplot()
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    ax.scatter([t.number for t in done], [t.value for t in done], label="complete", zorder=3)
    if done:
        ax.step([t.number for t in done], np.maximum.accumulate([t.value for t in done]), where="post", c="red", label="best so far")
    pruned = [t for t in trials if t.state == TrialState.PRUNED and _last(t) is not None]
    if pruned:
        ax.scatter([t.number for t in pruned], [_last(t) for t in pruned], marker="x", c="grey", label="pruned (last epoch)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="trial", ylabel=metric, title="optimization history")
    ax.legend(loc="best", fontsize="small")
    return fig


def intermediate(trials, metric) -> Figure:
    fig = Figure(figsize=(6.4, 4))
    ax = fig.add_subplot()
    for t in trials:
        if not t.intermediate_values:
            continue
        steps = sorted(t.intermediate_values)
        values = [t.intermediate_values[s] for s in steps]
        if t.state == TrialState.PRUNED:
            ax.plot(steps, values, "--", c="tab:red", alpha=0.8)
            ax.plot(steps[-1:], values[-1:], "x", c="tab:red", ms=9)
        else:
            ax.plot(steps, values, "-o", c="tab:blue", alpha=0.6, ms=3)
    ax.plot([], [], "-o", c="tab:blue", ms=3, label="complete / other")
    ax.plot([], [], "--x", c="tab:red", label="pruned")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel=f"validation {metric}", title="intermediate values")
    ax.legend(loc="best", fontsize="small")
    return fig


def param_importances(study) -> dict[str, float]:
    """The dashboard's evaluator and target (PED-ANOVA on -value, the study maximises), so the two agree."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optuna.importance.get_param_importances(study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(),
                                                       target=lambda t: -t.value)


def importance(study) -> tuple[Figure | None, str]:
    n = len([t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))])
    if n < 2:
        return None, f"Parameter importance needs at least 2 complete trials; this study has {n}."
    try:
        imp = param_importances(study)
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
        return None, f"Parameter importance could not be computed: {e}"
    fig = Figure(figsize=(6.4, 2.5))
    ax = fig.add_subplot()
    names = list(imp)[::-1]
    ax.barh(names, [imp[k] for k in names], color="tab:blue")
    ax.set(xlabel="importance (PED-ANOVA, as in the dashboard)", xlim=(0, 1), title="parameter importance")
    fig.tight_layout()
    if n < MIN_FOR_IMPORTANCE:
        return fig, (f"From only {n} complete trials (fewer than {MIN_FOR_IMPORTANCE}): a rough guess that more trials can "
                     "reorder; do not drop a parameter from the search on its strength.")
    return fig, f"From {n} complete trials."


PLOT_NAME = 24  # characters of a class name a plot shows; the page's text gives it whole


def plot_name(name: str) -> str:
    """A class name as a plot label: literal (matplotlib would read "$...$" as math, or fail on it)
    and short enough not to squeeze the axes."""
    short = name if len(name) <= PLOT_NAME else name[:PLOT_NAME - 1] + "\u2026"
    return short.replace("$", r"\$")


def confusion_plot(cm: list[list[int]], classes: list[str]) -> Figure:
    n = len(classes)
    fig = Figure(figsize=(max(4.8, 1.5 + 0.33 * n), max(4.2, 1.5 + 0.3 * n)))  # a long tail's cells keep room for their counts
    ax = fig.add_subplot()
    m = np.array(cm)
    ax.imshow(m, cmap="Blues")
    for (i, j), c in np.ndenumerate(m):
        ax.text(j, i, str(c), ha="center", va="center", color="white" if c > m.max() / 2 else "black")
    names = [plot_name(c) for c in classes]
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=names, yticklabels=names,
           xlabel="predicted", ylabel="true", title="test confusion matrix")
    if len(names) > 4:  # many side by side would overlap: upright, one per column
        ax.tick_params(axis="x", labelrotation=90)
    elif max(map(len, names)) > 8:  # a few long names
        ax.tick_params(axis="x", labelrotation=30)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    fig.tight_layout()
    return fig


def pr_plot(probs, targets, classes, at=None, focus: int | None = None) -> Figure:
    """Precision-recall of the positive class (classes[1]) with the operating point ``at`` (its
    test recall and precision at the threshold) marked; one curve per class when C > 2, with the
    operating point of the class to detect (``focus``) marked, which its ratio cut decides."""
    fig = Figure(figsize=(5.2, 4.2))
    ax = fig.add_subplot()
    p, y = probs.detach().float().cpu().numpy(), targets.cpu().numpy()
    curves = [(classes[1], p, y == 1)] if p.ndim == 1 else [(c, p[:, i], y == i) for i, c in enumerate(classes)]
    for name, score, truth in curves:
        if truth.any():
            precision, recall, _ = precision_recall_curve(truth, score)
            ap = average_precision_score(truth, score)
            ax.step(recall, precision, where="post", label=f"{plot_name(name)}: AP {ap:.3f}, prior {truth.mean():.2f}")
    if at is not None and "recall" in at and (p.ndim == 1 or focus is not None):
        cut = (cut_text(at["threshold"]) if p.ndim == 1 else
               f"{cut_text(at['class_thresholds'][focus])} on p({plot_name(classes[focus])}) / largest other")
        ax.scatter([at["recall"]], [at["precision"]], marker="o", s=80, c="red", edgecolors="black", zorder=3,
                   label=f"threshold {cut} (chosen on validation)")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.05), title="test precision-recall")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def _img(path: Path | None) -> str:
    if path is None:
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _fmt(v, f=".4f") -> str:
    return "-" if v is None else format(v, f)


def _weights(t) -> str:
    """The trial's class weighting as the table shows it: alpha, beta, or none."""
    if t.user_attrs.get(keys.UNWEIGHTED):
        return "none"
    if "one_minus_beta" in t.params:
        return format(1 - t.params["one_minus_beta"], ".4f")
    return _fmt(t.params.get("alpha"), ".3f")


def _table(trials, best, metric, second) -> str:
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.value is not None), key=lambda t: t.value, reverse=True)
    again = queued_again(trials)
    rows = done[:TOP] + [t for t in trials if keys.REFERENCE in t.user_attrs and t not in done[:TOP] and t.number not in again]
    rank = {t.number: i + 1 for i, t in enumerate(done)}
    head = "".join(f"<th>{h}</th>" for h in ("rank", "trial", "state", "gamma", "alpha" if second == "alpha" else "beta", metric, "fold spread", "balanced acc.",
                                              "macro-F1", "epochs", "note"))
    body = []
    for t in rows:
        ref = t.user_attrs.get(keys.REFERENCE)
        note = "; ".join(x for x in ("best" if t.number == best.number else "", f"reference: {ref}" if ref else "") if x)
        cls = "best" if t.number == best.number else "ref" if ref else ""
        cells = (rank.get(t.number, "-"), t.number, t.state.name, _fmt(t.params.get("gamma"), ".3f"), _weights(t),
                 _fmt(t.value), "-" if t.user_attrs.get(keys.FOLD_SPREAD) is None else "± " + _fmt(t.user_attrs[keys.FOLD_SPREAD]), _fmt(t.user_attrs.get(keys.BALANCED_ACCURACY)),
                 _fmt(t.user_attrs.get(keys.MACRO_F1)),
                 t.user_attrs.get(keys.EPOCHS, 0), note)
        body.append(f'<tr class="{cls}">' + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _page(study, cfg, best, trials, words, sections, test_note, test_sections) -> str:
    e = html.escape
    parts = [
        f"<h1>Study {e(study.study_name)}</h1>",
        f"<p>{len(trials)} trials: {counts_words(counts(study))}. Metric: validation {e(words)} (higher is better).</p>",
        f"<p><b>Best trial {best.number}</b>: {e(words)} {best.value:.4f} with "
        f"{e(describe_trial(best).replace('=', ' '))}.</p>",
        f"<h2>Top trials and reference trials</h2>{_table(trials, best, cfg.study.metric, _second(cfg))}",
        "<p>" + e(f"The final model: {final_words(cfg, final_members(study, cfg))}. " + (
            "The fold spread is the standard deviation of the objective over the folds: differences between trials "
            "smaller than it are within the noise of the data." if cfg.data.folds > 1 else
            "With data.folds = 1 there is no fold spread: one validation split cannot say how noisy a value is.")) + "</p>",
        *(f"<p><b>{e(note)}</b></p>" for note in margin_notes(study, cfg)),
    ]
    for title, path, note in sections:
        parts.append(f"<h2>{e(title)}</h2>{_img(path)}" + (f"<p>{e(note)}</p>" if note else ""))
    heading = "The final model on the test split" if test_sections else "The final model"
    parts.append(f"<h2>{heading}</h2><p>{e(test_note)}</p>")
    parts += [f"<p><b>{e(note)}</b></p>" for note in notes_on_test(study)]
    for title, path, note in test_sections:
        parts.append(f"<h3>{e(title)}</h3>{_img(path)}")
    style = ("body{font-family:sans-serif;max-width:960px;margin:2em auto;padding:0 1em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}tr.best{background:#fde2e2}tr.ref{background:#e2ecfd}"
             "img{max-width:100%}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Study {e(study.study_name)}</title>'
            f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
