"""What ``tuner best`` prints: ``best_summary``'s dict in lines a person reads."""

from tuner.search.study import describe_params
from tuner.show.progress import counts_words, cut_text
from tuner.show.summary import NOT_CHOSEN, decision_words, final_label, metric_words


def best_lines(s: dict) -> list[str]:
    """The best trial, how it and the final model decide, the reference trials and the test check."""
    lines = [counts_words(s["counts"]),
             f"best trial {s['trial']}: {metric_words(s['metric'], s['classes'], s['positive_class'])} {s['value']:.4f} "
             f"with {describe_params(s['params'], s['unweighted']).replace('=', ' ')}"]
    if s["alpha_per_class"] and (s["alpha_mode"] == "class_balanced" or len(s["classes"] or []) > 2):  # whom alpha weights
        lines.append("  class weights: " + ", ".join(f"{k} {v:.3f}" for k, v in s["alpha_per_class"].items()))
    mean = len(s["final_trials"]) > 1  # the final model then has its own threshold: predict uses that one
    lines += decision_lines("its " if mean else "", s, s, "on validation")
    if s["validation"].get("fold_spread") is not None:
        lines.append(f"  fold spread of {s['metric']}: {s['validation']['fold_spread']:.4f}")
    lines.append(f"  final model: {s['final_model']}")
    if s["final_decision"]:
        lines += decision_lines("the final model's ", s["final_decision"], s,
                                "on its trials' averaged validation predictions", "; predict uses it")
    elif mean:
        lines.append(f"  {NOT_CHOSEN}")
    for r in s["references"]:
        value = "-" if r["value"] is None else f"{r['value']:.4f}"
        lines.append(f"  reference trial {r['trial']} ({r['label']}): {value}, {r['state'].lower()}")
    lines += [f"  note: {note}" for note in s["notes"]]
    if s["test"]:
        lines.append(f"test set, {s['test']['n']} images ({_sources(s)}):")
        lines.append(check_line(f"best trial {s['trial']}", s["test"], s["positive_class"], s["classes"]))
        if s["final"]:
            lines.append(check_line(final_label(s["final"]["trials"]), s["final"], s["positive_class"], s["classes"]))
        for r in s["references"]:
            if r["test"] and r["trial"] != s["trial"]:
                lines.append(check_line(f"reference trial {r['trial']}", r["test"], s["positive_class"], s["classes"]))
        lines += [f"  note: {note}" for note in s["test_notes"]]
    elif s["test_split"]:
        before = "" if s["earlier_test"] is None else f" (the stored one is of trial {s['earlier_test']}, the best trial then)"
        lines.append(f"no test check of these trials yet{before}: start-study makes it when its run ends, tuner best --retrain now")
    else:
        lines.append("no test check: the image folder has no test/ split, so every value above is out-of-fold or validation; "
                     "put the class folders in data.root/train/ and test images in data.root/test/<class>/ to check the "
                     "models on images no trial chose on")
    return lines


def decision_lines(whose: str, d: dict, s: dict, where: str, then: str = "") -> list[str]:
    """How a model decides (``d``: its threshold, class_thresholds and temperature), in one line."""
    if d["threshold"] is not None:
        return [f"  {whose}threshold {cut_text(d['threshold'])} on the calibrated probability of {s['positive_class']!r} "
                f"(chosen {where} for {s['operating_point']}; temperature {d['temperature']:.3f}){then}"]
    if d.get("class_thresholds") and s["positive_class"]:
        return [f"  {whose}threshold {cut_text(d['class_thresholds'][s['positive_class']])} on p({s['positive_class']}) / the "
                f"largest other class's probability (chosen {where} for {s['operating_point']}; below it, the most probable "
                f"other class; temperature {d['temperature']:.3f}){then}"]
    if d.get("class_thresholds"):
        return [f"  {whose}per-class thresholds (the class with the largest calibrated probability / threshold wins; chosen "
                f"{where} for {s['operating_point']}; temperature {d['temperature']:.3f}): "
                + ", ".join(f"{k} {cut_text(v)}" for k, v in d["class_thresholds"].items()) + then]
    return []


def _sources(s: dict) -> str:
    """Where the test check's models came from; the final model's "retrained" means one of its members was."""
    found = {s["test"]["source"]} | {r["test"]["source"] for r in s["references"] if r["test"]}
    if s["final"]:
        found.add(s["final"]["source"])
    if found == {"checkpoint"}:
        return "each trial's model as its worker saved it"
    if found == {"retrained"}:
        return "each trial's model retrained with its parameters and seed"
    return "the models as their workers saved them; those whose files were not here retrained with their parameters and seed"


def check_line(name: str, t: dict, positive: str | None, classes: list[str] | None) -> str:
    """One model's test check: AP, balanced accuracy, the positive class's recall and precision at the
    model's own threshold, calibration and the confusion matrix."""
    rows = f" (rows true, columns predicted: {', '.join(map(repr, classes))})" if classes else ""
    if "threshold" in t:
        return (f"  {name}: AP of {positive!r} {t['average_precision']:.4f}, balanced accuracy {t['balanced_accuracy']:.4f}, "
                f"recall of {positive!r} {t['recall']:.4f}, precision {t['precision']:.4f} at threshold {cut_text(t['threshold'])}; "
                f"ECE {t['ece']:.4f} -> {t['ece_calibrated']:.4f} calibrated; confusion {t['confusion_matrix']}{rows}")
    own = f", AP of {positive!r} {t['class_average_precision']:.4f}" if "class_average_precision" in t else ""  # older checks lack it
    detect = f"{own}, recall of {positive!r} {t['recall']:.4f}, precision {t['precision']:.4f}" if positive and "recall" in t else ""
    # each model's own thresholds: the final model's are the ones predict uses
    cuts = "" if not classes or not t.get("class_thresholds") else (
        f" at threshold {cut_text(t['class_thresholds'][classes.index(positive)])} on p({positive}) / the largest other"
        if positive in classes else f" at thresholds {', '.join(f'{c} {cut_text(v)}' for c, v in zip(classes, t['class_thresholds']))}")
    confusion = f"; confusion {t['confusion_matrix']}{rows}" if classes and "confusion_matrix" in t else ""
    return (f"  {name}: macro AP {t['average_precision']:.4f}, balanced accuracy {t['balanced_accuracy']:.4f}, "
            f"macro-F1 {t['macro_f1']:.4f}{detect}{cuts}; ECE {t['ece']:.4f} -> {t['ece_calibrated']:.4f} calibrated{confusion}")


def cut_phrase(saved: dict) -> str:
    """Where a saved model decides, in words (``saved``: its .json settings)."""
    cut = saved["threshold"] if len(saved["classes"]) == 2 else saved["class_thresholds"]
    return (decision_words(cut, saved["classes"], saved["positive_class"], saved["operating_point"])
            + f", with the temperature {saved['temperature']:.3f}")
