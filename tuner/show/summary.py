"""What a study has stored, as the read commands show it: the best trial, a status table, the list of
studies, the notes on margins and the test check. Stored attributes only, so ``status``, ``list``,
``best`` and ``export`` start without importing torch; what needs the models is in ``results``.
``few_to_find`` alone reads loaded images: a sentence that start-study and the report share."""

import math

import optuna
from optuna.trial import TrialState

from tuner import keys
from tuner.errors import UserError
from tuner.learn.weights import alpha_per_class, focus_class, loss_alpha
from tuner.search.config import StudyConfig
from tuner.search.storage import open_storage
from tuner.search.study import KEEP_MODELS, counts, older_rule_note, older_rule_trials, stored_config, trial_duration, trial_note
from tuner.show.progress import cut_of, cut_text, failed_words


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    try:
        return study.best_trial
    except ValueError:
        c = counts(study)
        done = c["FINISHED"] >= study.user_attrs.get(keys.TARGET, math.inf) and not c["RUNNING"] + c["WAITING"]
        raise UserError(f"study {study.study_name!r} has no completed trial{'' if done else ' yet'} "
                        f"({c['RUNNING']} running, {c['WAITING']} waiting, {c['PRUNED']} pruned, {failed_words(c)}); "
                        + ("it has its target of finished trials, none complete: tuner status says why each ended (a "
                           "learning rate too high diverges, say); fix the study file and start a new study"
                           if done else "wait for the running trials to end (tuner status shows them)"
                           if c["RUNNING"] else "run tuner start-study or tuner worker"))


def trial_alpha(trial: optuna.trial.FrozenTrial, class_counts: list[int], focus: int | None = None):
    """The class weighting the trial trained with, as the loss took it (``focus``: see ``focus_class``)."""
    return None if trial.user_attrs.get(keys.UNWEIGHTED) else loss_alpha(trial.params, class_counts, focus)


def shown_params(trial: optuna.trial.FrozenTrial) -> dict:
    """The parameters the trial trains with (a queued trial's are fixed already), with beta next to
    the searched 1 - beta; a trial without class weights has no 1 - beta: Optuna's search space
    needs a value, which it never trained with."""
    params = dict(trial.params or trial.system_attrs.get("fixed_params", {}))
    if trial.user_attrs.get(keys.UNWEIGHTED):
        params.pop("one_minus_beta", None)
    elif "one_minus_beta" in params:
        params["beta"] = 1.0 - params["one_minus_beta"]
    return params


NOT_CHOSEN = ("the final model's threshold is not chosen for these trials yet: tuner start-study chooses it when its run "
              "ends, tuner best --save-model or --retrain now")


def metric_words(metric: str, classes: list[str] | None, positive: str | None) -> str:
    """The objective with whom it is of: AP of the positive class, or macro over the classes."""
    if metric != "average_precision" or not classes:
        return metric
    return (f"average_precision of {positive!r}" if len(classes) == 2 else
            f"average_precision (macro over the {len(classes)} classes)")


def best_summary(study: optuna.Study, cfg: StudyConfig) -> dict:
    """The contract of ``tuner best --json``."""
    best = best_trial(study)
    data = study.user_attrs.get(keys.DATA, {})
    classes, class_counts = data.get("classes"), data.get("class_counts")
    test = study.user_attrs.get(keys.BEST_TEST)
    test = test if test and test.get("trial") == best.number else None
    ref_tests = {r["trial"]: r for r in study.user_attrs.get(keys.REFERENCES_TEST, [])}
    members = final_members(study, cfg)
    refs = [
        {"trial": t.number, "label": t.user_attrs[keys.REFERENCE], "state": t.state.name, "value": t.value,
         "params": shown_params(t), "threshold": t.user_attrs.get(keys.THRESHOLD),
         "test": ref_tests.get(t.number) or (test if t.number == best.number else None)}
        for t in study.get_trials(deepcopy=False) if keys.REFERENCE in t.user_attrs and t.state in (TrialState.COMPLETE, TrialState.PRUNED)
    ]
    return {
        "study": study.study_name,
        "metric": cfg.study.metric,
        "value": best.value,
        "trial": best.number,
        "params": shown_params(best),
        "unweighted": bool(best.user_attrs.get(keys.UNWEIGHTED)),
        "alpha_mode": cfg.search.alpha_mode,
        "alpha_per_class": alpha_per_class(trial_alpha(best, class_counts, focus_class(cfg, classes)), classes) if classes and class_counts else None,
        "positive_class": cfg.data.positive_class or None,
        "classes": classes,  # in label order: the rows and columns of each confusion matrix
        "operating_point": cfg.study.operating_point,
        "threshold": best.user_attrs.get(keys.THRESHOLD),
        "class_thresholds": (dict(zip(classes, best.user_attrs[keys.CLASS_THRESHOLDS]))
                             if classes and keys.CLASS_THRESHOLDS in best.user_attrs else None),
        "temperature": best.user_attrs.get(keys.TEMPERATURE),
        "validation": {k: best.user_attrs[k] for k in keys.VALIDATION if k in best.user_attrs},
        "epochs": best.user_attrs.get(keys.EPOCHS),
        "folds": cfg.data.folds,
        "final_model": final_words(cfg, members),
        "final_trials": [t.number for t in members],
        "final_decision": final_decision(study, members),
        "final": final_test(study, members),
        "notes": margin_notes(study, cfg),
        "seed": best.user_attrs.get(keys.SEED),
        "test": test,
        # an image folder without test/ has none: say so rather than leave the test check out unexplained
        "test_split": study.user_attrs.get(keys.DATA, {}).get("fingerprints", {}).get("test") != "",
        "test_notes": notes_on_test(study, members) if test else [],
        "earlier_test": (study.user_attrs.get(keys.BEST_TEST) or {}).get("trial") if not test else None,
        "references": refs,
        "counts": {k: v for k, v in counts(study).items() if k in ("COMPLETE", "PRUNED", "FAIL", "QUEUED_AGAIN", "RUNNING", "WAITING")},
    }


def margin_notes(study: optuna.Study, cfg: StudyConfig) -> list[str]:
    """A sentence when the best trial is a reference trial, for each reference trial that the best
    trial beats by less than its fold spread, and for trials whose thresholds an earlier rule chose."""
    best = best_trial(study)
    spread = best.user_attrs.get(keys.FOLD_SPREAD)
    notes = []
    if older := older_rule_trials(study, cfg):
        note = older_rule_note(older)
        notes.append(note[0].upper() + note[1:] + ".")
    if keys.REFERENCE in best.user_attrs:
        notes.append(f"The best trial is reference trial {best.number} ({best.user_attrs[keys.REFERENCE]}): "
                     "no searched trial beat it on validation.")
    if spread is None:
        return notes
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if keys.REFERENCE in t.user_attrs and t.number != best.number and best.value - t.value <= spread:
            notes.append(f"The best trial's margin over reference trial {t.number} ({t.user_attrs[keys.REFERENCE]}) is "
                         f"{best.value - t.value:.4f}, within its fold spread of {spread:.4f}: on this data the "
                         "two cannot be told apart.")
    return notes


def notes_on_test(study: optuna.Study, members: list[optuna.trial.FrozenTrial] | None = None) -> list[str]:
    """A sentence per reference trial on how it compares on the test split with the model the study
    hands back (``final_model``), on average precision and balanced accuracy, told apart from the
    test split's noise: a difference counts only when it exceeds twice its bootstrap standard
    deviation (``paired_bootstrap``)."""
    best = study.user_attrs.get(keys.BEST_TEST)
    if not best or best.get("trial") != best_trial(study).number:  # none yet, or of an earlier best trial
        return []
    cfg = stored_config(study)
    members = final_members(study, cfg) if members is None else members
    if stale := stale_test(study, members):  # its comparisons with the references were of that model
        return [stale]
    final = final_test(study, members)
    if final:
        ours, short = final_label(final["trials"]), "the final model"
    else:
        final, ours, short = best, f"the best trial {best['trial']}", "the best trial"
    labels = {t.number: t.user_attrs.get(keys.REFERENCE) for t in study.get_trials(deepcopy=False)}
    classes = study.user_attrs.get(keys.DATA, {}).get("classes") or []
    positive = cfg.data.positive_class
    notes = []
    for ref in study.user_attrs.get(keys.REFERENCES_TEST, []):
        gap = ref.get("against_final", {})  # checks stored before the bootstrap have none
        who = f"reference trial {ref['trial']} ({labels.get(ref['trial'])})"
        said, real = {}, {}
        # the AP of the class to detect where it is known (checks stored before it have only the macro AP)
        ap = ((keys.CLASS_AVERAGE_PRECISION, f"AP of {positive!r}") if keys.CLASS_AVERAGE_PRECISION + "_std" in gap
              else (keys.AVERAGE_PRECISION, f"AP of {positive!r}" if len(classes) == 2 and positive else
                    "macro AP" if len(classes) > 2 else "AP"))
        for k, name in (ap, (keys.BALANCED_ACCURACY, "balanced accuracy")):
            std = gap.get(k + "_std")
            real[k] = std is None or abs(ref[k] - final[k]) > 2 * std
            said[k] = (f"{name} {ref[k]:.4f} for the reference against {final[k]:.4f} for {short}"
                       + ("" if std is None else f" (bootstrap std of the difference {std:.4f})"))
        higher = [k for k in real if real[k] and ref[k] > final[k]]
        unclear = [k for k in real if not real[k]]
        won = [k for k in real if real[k] and ref[k] < final[k]]
        luck = "a difference under twice its bootstrap std is the luck of the test images"
        if higher and won and gap:  # each better on one metric: neither advice fits both
            notes.append(f"On the test split {who} scored higher than {ours} on {', '.join(said[k] for k in higher)}, and "
                         f"{ours} higher on {', '.join(said[k] for k in won)}, each by more than twice the bootstrap std: "
                         "neither is better on both; choose by the metric your use needs.")
        elif higher:
            notes.append(f"On the test split {who} scored higher than {ours}: "
                         f"{', '.join(said[k] for k in higher)}. The tuned loss did not beat it here; if this holds on "
                         "more data, train with the reference's settings.")
        elif unclear and len(unclear) < len(real) and gap:  # one metric a clear win, the other not
            won = [k for k in real if real[k]]
            notes.append(f"On the test split {ours} beat {who} on {', '.join(said[k] for k in won)}, by more than twice "
                         f"the bootstrap std, and is not shown to beat it on {', '.join(said[k] for k in unclear)}: {luck}.")
        elif unclear:
            notes.append(f"On the test split {ours} is not shown to beat {who}: {', '.join(said[k] for k in unclear)}; {luck}.")
        elif gap:
            notes.append(f"On the test split {ours} beat {who} by more than twice the bootstrap "
                         f"std of each difference: {', '.join(said.values())}.")
    return notes


def study_rows(url: str) -> list[dict]:
    """One row per study in the storage (``tuner list``): trial counts and the best value so far."""
    storage = open_storage(url, existing=True)
    rows = []
    for name in optuna.get_all_study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage)
        c = counts(study)
        try:
            best = study.best_trial
        except (ValueError, RuntimeError):  # none complete yet, or a multi-objective study of another tool
            best = None
        metric = (study.user_attrs.get(keys.CONFIG, {}).get("study", {}).get("metric") or
                  ",".join(study.metric_names or []) or None)
        rows.append({"study": study.study_name, "metric": metric, "target": study.user_attrs.get(keys.TARGET),
                     "complete": c["COMPLETE"], "pruned": c["PRUNED"], "running": c["RUNNING"], "waiting": c["WAITING"],
                     "failed": c["FAIL"], "queued_again": c["QUEUED_AGAIN"], "best_value": None if best is None else best.value,
                     "best_trial": None if best is None else best.number})
    return rows


def threshold_rule(study: optuna.Study) -> tuple[int | None, str | None]:
    """What a trial's threshold cuts: (the index of the class to detect among more than two, or None;
    the words), words None for a study without classes (one tuner did not make)."""
    classes = study.user_attrs.get(keys.DATA, {}).get("classes") or []
    try:
        cfg = stored_config(study)
        focus = focus_class(cfg, classes)
    except UserError:  # a study tuner did not create
        return None, None
    if len(classes) == 2:
        return None, cut_of(positive=classes[1])
    if focus is not None:
        return focus, cut_of(detect=classes[focus])
    if classes and cfg.study.operating_point != "balanced_accuracy":  # stored before a class to detect existed
        return None, cut_of()
    return None, "one per class, chosen on validation (tuner best shows them)" if classes else None


def trial_threshold(trial: optuna.trial.FrozenTrial, focus: int | None) -> float | None:
    """The trial's threshold: on the positive class's probability, or with a class to detect
    among more (``threshold_rule``), its cut on the ratio; None for per-class thresholds."""
    if focus is not None and keys.CLASS_THRESHOLDS in trial.user_attrs:
        return trial.user_attrs[keys.CLASS_THRESHOLDS][focus]
    return trial.user_attrs.get(keys.THRESHOLD)


def status_rows(study: optuna.Study, focus: int | None) -> list[dict]:
    """One row per trial; ``focus`` as ``threshold_rule`` gives it."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        params = shown_params(t)
        rows.append({
            "trial": t.number,
            "state": t.state.name,
            "gamma": params.get("gamma"),
            "alpha": params.get("alpha"),
            "beta": params.get("beta"),
            "value": t.value,
            "threshold": trial_threshold(t, focus),
            "epochs": t.user_attrs.get(keys.EPOCHS, 0),
            "duration_s": trial_duration(t),
            "note": trial_note(t),
            "worker": t.user_attrs.get(keys.WORKER),  # host:index
        })
    return rows


def final_members(study: optuna.Study, cfg: StudyConfig) -> list[optuna.trial.FrozenTrial]:
    """The trials whose models the final model averages: with ``study.final_model = "ensemble"``
    the best KEEP_MODELS complete trials and the complete reference trials (the models a study
    keeps), best first; else the best trial alone."""
    best = best_trial(study)
    if cfg.study.final_model != "ensemble":
        return [best]
    done = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.value, reverse=True)
    top = [t for t in done if keys.REFERENCE not in t.user_attrs][:KEEP_MODELS]
    return sorted(top + [t for t in done if keys.REFERENCE in t.user_attrs], key=lambda t: (t.number != best.number, -t.value))


def final_label(trials: list[int]) -> str:
    """How tuner names a final model that is a mean of trials."""
    return f"the final model (the mean of trials {', '.join(map(str, trials))})"


def final_words(cfg: StudyConfig, members: list[optuna.trial.FrozenTrial] | None = None) -> str:
    """What the final model is, in words (``members``: ``final_members``)."""
    if cfg.data.folds > 1:
        one = (f"an ensemble of the {cfg.data.folds} fold models (mean of their logits), each trained on "
               f"{cfg.data.folds - 1}/{cfg.data.folds} of the training images")
    else:
        one = f"one model trained on {1 - cfg.data.val_fraction:.0%} of the training images (the rest validated it)"
    if members is None or len(members) < 2:
        return f"the best trial's model, {one}"
    searched = [str(t.number) for t in members if keys.REFERENCE not in t.user_attrs]
    refs = [str(t.number) for t in members if keys.REFERENCE in t.user_attrs]
    both = lambda numbers: ", ".join(numbers[:-1]) + " and " + numbers[-1] if len(numbers) > 1 else numbers[0]  # noqa: E731
    # by number: the list comes best first, and a reference trial may be the best
    which = [f"the best {len(searched)} searched trials {both(searched)}" if len(searched) > 1 else
             f"the best searched trial {searched[0]}" if searched else "",
             f"the {len(refs)} reference trials {both(refs)}" if len(refs) > 1 else f"the reference trial {refs[0]}" if refs else ""]
    return (f"the mean of the calibrated logits of trials {', '.join(str(t.number) for t in members)} "
            f"({' and '.join(w for w in which if w)}), each {one}; one temperature and threshold chosen on their averaged "
            "validation predictions")


def _of_members(study: optuna.Study, key: str, members: list[optuna.trial.FrozenTrial] | None) -> dict | None:
    """What the driver stored under ``key`` for the final model when it is a mean of trials, while
    it averages the same trials (``members``: ``final_members``; a trial finished since, by another
    worker say, can change them)."""
    stored = study.user_attrs.get(key)
    members = final_members(study, stored_config(study)) if members is None else members
    return stored if stored and len(members) > 1 and set(stored.get("trials", [])) == {t.number for t in members} else None


def final_decision(study: optuna.Study, members: list[optuna.trial.FrozenTrial] | None = None) -> dict | None:
    """The stored temperature and thresholds of the final model (``_of_members``). A study stored
    before they were has them in its test check of the same trials, made at them."""
    stored = _of_members(study, keys.FINAL_DECISION, members)
    test = None if stored else _of_members(study, keys.FINAL_TEST, members)
    if not test or test.get("threshold") is None and not test.get("class_thresholds"):
        return stored
    classes, cut = study.user_attrs.get(keys.DATA, {}).get("classes") or [], test.get("class_thresholds")
    return {"trials": test["trials"], "best_trial": test.get("best_trial"), "temperature": test["temperature"],
            "threshold": test.get("threshold"), "class_thresholds": dict(zip(classes, cut)) if cut and len(classes) > 2 else None}


def same_decision(a: dict, b: dict) -> bool:
    """Whether two records of a final model's decision (its stored one, its test check's) give the same
    temperature and thresholds, to the digits a recomputation on the same images keeps."""
    close = lambda x, y: x is None or y is None or math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9)  # noqa: E731
    cuts = [list(c.values()) if isinstance(c, dict) else c for c in (a.get("class_thresholds"), b.get("class_thresholds"))]
    return (close(a.get("temperature"), b.get("temperature")) and close(a.get("threshold"), b.get("threshold"))
            and (None in cuts or len(cuts[0]) == len(cuts[1]) and all(map(close, *cuts))))


def final_test(study: optuna.Study, members: list[optuna.trial.FrozenTrial] | None = None,
               decision: dict | None = None) -> dict | None:
    """The stored test check of the final model (``_of_members``), while it was made at the decision
    the model has (``decision``, by default the stored one): the same trials give another when their
    validation predictions changed (images decoded otherwise by a newer tuner)."""
    test = _of_members(study, keys.FINAL_TEST, members)
    decision = decision or _of_members(study, keys.FINAL_DECISION, members)
    return test if not (test and decision) or same_decision(test, decision) else None


def stale_test(study: optuna.Study, members: list[optuna.trial.FrozenTrial]) -> str | None:
    """A sentence when the stored test check of the final model is of other trials than it averages
    now, or of the same trials at another threshold and temperature."""
    final = study.user_attrs.get(keys.FINAL_TEST)
    if not final or final_test(study, members):
        return None
    if _of_members(study, keys.FINAL_TEST, members):
        return (f"The stored test check of the final model was made at the temperature {final['temperature']:.3f} and its "
                "threshold then, not at those it decides with now (its trials' validation predictions changed, as when a newer "
                "tuner decodes the images otherwise): run tuner best --retrain to check it again.")
    return (f"The stored test check is of an earlier final model (the mean of trials {', '.join(map(str, final['trials']))}); "
            f"trials finished since make it the mean of trials {', '.join(str(t.number) for t in members)}: run tuner best "
            "--retrain (or start-study again) to check that one.")


def decision_words(cut, classes: list[str], positive: str | None, rule: str) -> str:
    """Where a model decides, in words after "decides" (``cut``: its threshold, or per-class thresholds;
    ``positive``: the positive class, or the class to detect among more)."""
    if len(classes) == 2:
        return f"at the threshold {cut_text(cut)} on the calibrated probability of {positive!r}, chosen on validation for {rule}"
    if not cut:
        return "for the most probable class"
    if rule == "balanced_accuracy":
        return ("at per-class thresholds chosen on validation for balanced accuracy ("
                + ", ".join(f"{c} {cut_text(v)}" for c, v in zip(classes, cut)) + ")")
    return (f"for {positive!r} when its probability over the largest other one reaches {cut_text(cut[classes.index(positive)])}, "
            f"chosen on validation for {rule}, else for the most probable class")


def few_to_find(cfg, data) -> str | None:
    """A sentence when a recall>=X rule has too few validation images of its class to miss even one
    (``data``: the study's loaded images)."""
    from tuner.learn.metrics import check_operating_point, misses_allowed

    target, name = check_operating_point(cfg.study.operating_point), data.positive_class or cfg.data.positive_class
    if target is None or target == 1 or not name:
        return None
    k = data.classes.index(name)
    n = data.pool_counts()[k] if cfg.data.folds > 1 else int((data.val_y == k).sum())
    if misses_allowed(n, target):
        return None
    return (f"only {n} validation image{'s' * (n != 1)} of {name!r}: {cfg.study.operating_point} must find every one "
            f"(missing one is recall {(n - 1) / n:.2f}), so the threshold falls below the hardest one and precision pays; "
            f"from {math.ceil(1 / (1 - target) - 1e-9)} such images on, it may miss one.")
