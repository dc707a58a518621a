"""What ``tuner best`` says of the test split, read from a real SQLite study."""

import optuna
from optuna.distributions import FloatDistribution

from tuner import keys
from tuner.search.config import from_dict
from tuner.show.summary import final_test, notes_on_test

SPACE = {"gamma": FloatDistribution(0.0, 5.0), "alpha": FloatDistribution(0.05, 0.95)}


def study_with(tmp_path, best_test, refs_test, classes=None, positive=None):
    tmp_path.mkdir(exist_ok=True)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/t.db", study_name="s", direction="maximize")
    for value, params, label in ((0.90, {"gamma": 0.0, "alpha": 0.5}, "cross-entropy"),
                                 (0.91, {"gamma": 2.0, "alpha": 0.25}, "focal default"),
                                 (0.93, {"gamma": 1.2, "alpha": 0.6}, None)):
        attrs = {keys.REFERENCE: label} if label else {}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=SPACE, value=value, user_attrs=attrs))
    study.set_user_attr(keys.BEST_TEST, best_test)
    study.set_user_attr(keys.REFERENCES_TEST, refs_test)
    study.set_user_attr(keys.CONFIG, from_dict({"data": {"kind": "synthetic", "positive_class": positive or ""}}).to_dict())
    if classes:
        study.set_user_attr(keys.DATA, {"classes": classes})
    return study


def test_a_reference_that_scores_higher_on_the_test_split_is_named_with_the_metric_it_wins(tmp_path):
    study = study_with(tmp_path, best_test={"trial": 2, "average_precision": 0.95, "balanced_accuracy": 0.97},
                       refs_test=[{"trial": 0, "average_precision": 0.96, "balanced_accuracy": 0.96},
                                  {"trial": 1, "average_precision": 0.94, "balanced_accuracy": 0.97}])
    notes = notes_on_test(study)
    assert len(notes) == 1
    assert "reference trial 0 (cross-entropy)" in notes[0] and "AP 0.9600 for the reference against 0.9500 for the best trial" in notes[0]
    assert "balanced accuracy" not in notes[0]  # it lost there, and a tie is no win


def test_no_note_when_the_best_trial_wins_or_the_stored_check_is_of_an_earlier_best(tmp_path):
    study = study_with(tmp_path, {"trial": 2, "average_precision": 0.97, "balanced_accuracy": 0.98},
                       [{"trial": 0, "average_precision": 0.96, "balanced_accuracy": 0.96}])
    assert notes_on_test(study) == []
    study.set_user_attr(keys.BEST_TEST, {"trial": 1, "average_precision": 0.5, "balanced_accuracy": 0.5})
    assert notes_on_test(study) == []


def gap(ref: dict, best: dict, std: float) -> dict:
    return {**ref, "against_final": {k: ref[k] - best[k] for k in ("average_precision", "balanced_accuracy")}
            | {"average_precision_std": std, "balanced_accuracy_std": std}}


def test_a_difference_within_twice_its_bootstrap_std_is_said_to_be_noise_whichever_way_it_goes(tmp_path):
    best = {"trial": 2, "average_precision": 0.95, "balanced_accuracy": 0.97}
    refs = [gap({"trial": 0, "average_precision": 0.96, "balanced_accuracy": 0.96}, best, 0.008),   # higher AP, within noise
            gap({"trial": 1, "average_precision": 0.94, "balanced_accuracy": 0.965}, best, 0.004)]  # lower on both, BA within noise
    notes = notes_on_test(study_with(tmp_path, best, refs))
    assert len(notes) == 2
    assert "best trial 2 is not shown to beat reference trial 0 (cross-entropy)" in notes[0]
    assert "AP 0.9600 for the reference against 0.9500 for the best trial (bootstrap std of the difference 0.0080)" in notes[0]
    assert "did not beat" not in notes[0] and "train with the reference's settings" not in notes[0]
    # AP: 0.01 > 2 x 0.004, a real win, said as one; balanced accuracy within the noise
    assert notes[1] == ("On the test split the best trial 2 beat reference trial 1 (focal default) on AP 0.9400 for the reference "
                        "against 0.9500 for the best trial (bootstrap std of the difference 0.0040), by more than twice the "
                        "bootstrap std, and is not shown to beat it on balanced accuracy 0.9650 for the reference against "
                        "0.9700 for the best trial (bootstrap std of the difference 0.0040): a difference under twice its "
                        "bootstrap std is the luck of the test images.")


def test_a_reference_higher_beyond_the_noise_or_beaten_beyond_it_is_said_so(tmp_path):
    best = {"trial": 2, "average_precision": 0.95, "balanced_accuracy": 0.97}
    refs = [gap({"trial": 0, "average_precision": 0.99, "balanced_accuracy": 0.968}, best, 0.004),  # BA within the noise
            gap({"trial": 1, "average_precision": 0.90, "balanced_accuracy": 0.90}, best, 0.004)]
    notes = notes_on_test(study_with(tmp_path, best, refs))
    assert "reference trial 0 (cross-entropy) scored higher than the best trial 2: AP 0.9900" in notes[0]
    assert "train with the reference's settings" in notes[0] and "balanced accuracy" not in notes[0]
    assert "best trial 2 beat reference trial 1 (focal default) by more than twice the bootstrap std" in notes[1]


def test_with_a_final_mean_of_trials_the_notes_compare_the_references_with_it(tmp_path):
    best = {"trial": 2, "average_precision": 0.95, "balanced_accuracy": 0.97}
    final = {"trials": [2, 0, 1], "best_trial": 2, "average_precision": 0.99, "balanced_accuracy": 0.99}
    study = study_with(tmp_path, best, [gap({"trial": 0, "average_precision": 0.96, "balanced_accuracy": 0.96}, final, 0.004)])
    study.set_user_attr(keys.FINAL_TEST, final)
    notes = notes_on_test(study)
    assert notes == ["On the test split the final model (the mean of trials 2, 0, 1) beat reference trial 0 (cross-entropy) by "
                     "more than twice the bootstrap std of each difference: AP 0.9600 for the reference against 0.9900 for "
                     "the final model (bootstrap std of the difference 0.0040), balanced accuracy 0.9600 for the reference "
                     "against 0.9900 for the final model (bootstrap std of the difference 0.0040)."]
    # a trial finished since (another worker's, say) joins the mean: the stored check is not of it
    study.add_trial(optuna.trial.create_trial(params={"gamma": 3.0, "alpha": 0.4}, distributions=SPACE, value=0.92))
    assert final_test(study) is None
    assert notes_on_test(study) == ["The stored test check is of an earlier final model (the mean of trials 2, 0, 1); trials "
                                    "finished since make it the mean of trials 2, 3, 1, 0: run tuner best --retrain (or "
                                    "start-study again) to check that one."]


def test_the_final_model_is_described_by_the_trials_it_averages(tmp_path):
    from tuner.search.config import from_dict
    from tuner.show.summary import final_words

    study = study_with(tmp_path, {}, [])
    cfg = from_dict({"data": {"kind": "synthetic", "folds": 1}})
    ref0, ref1, searched = study.trials
    assert "trials 2, 0, 1 (the best searched trial 2 and the 2 reference trials 0 and 1)" in final_words(
        cfg, [searched, ref0, ref1])
    # a reference trial first, as the best: the words still say which trial was searched
    assert "trials 0, 2, 1 (the best searched trial 2 and the 2 reference trials 0 and 1)" in final_words(
        cfg, [ref0, searched, ref1])
    assert "(the 2 reference trials 1 and 0)" in final_words(cfg, [ref1, ref0])  # no searched trial finished
    assert "(the best searched trial and" not in final_words(cfg, [searched]) and "the best trial's model" in final_words(cfg, [searched])


def test_the_ap_in_a_verdict_is_named_by_class_and_with_a_class_to_detect_is_its_own(tmp_path):
    best = {"trial": 2, "average_precision": 0.95, "balanced_accuracy": 0.97}
    ref = gap({"trial": 0, "average_precision": 0.99, "balanced_accuracy": 0.96}, best, 0.004)
    two = notes_on_test(study_with(tmp_path / "a", best, [ref], classes=["common", "rare"], positive="rare"))
    assert "AP of 'rare' 0.9900 for the reference against 0.9500" in two[0]
    three = ["a", "b", "rare"]
    assert "macro AP 0.9900" in notes_on_test(study_with(tmp_path / "b", best, [ref], classes=three))[0]
    # the class to detect: its own AP decides (a clear loss on it), though the macro AP is a clear win
    best = {**best, "class_average_precision": 0.90}
    ref = {"trial": 0, "average_precision": 0.90, "balanced_accuracy": 0.97, "class_average_precision": 0.98}
    ref["against_final"] = {"average_precision": -0.05, "average_precision_std": 0.004, "balanced_accuracy": 0.0,
                            "balanced_accuracy_std": 0.004, "class_average_precision": 0.08, "class_average_precision_std": 0.004}
    notes = notes_on_test(study_with(tmp_path / "c", best, [ref], classes=three, positive="rare"))
    assert notes[0].startswith("On the test split reference trial 0 (cross-entropy) scored higher than the best trial 2: "
                               "AP of 'rare' 0.9800 for the reference against 0.9000 for the best trial")


def test_a_reference_that_wins_one_metric_while_losing_the_other_beyond_the_noise_is_said_to_be_neither(tmp_path):
    best = {"trial": 2, "average_precision": 0.96, "balanced_accuracy": 0.70}
    ref = gap({"trial": 0, "average_precision": 0.74, "balanced_accuracy": 0.81}, best, 0.03)
    notes = notes_on_test(study_with(tmp_path, best, [ref]))
    assert notes == ["On the test split reference trial 0 (cross-entropy) scored higher than the best trial 2 on balanced "
                     "accuracy 0.8100 for the reference against 0.7000 for the best trial (bootstrap std of the difference "
                     "0.0300), and the best trial 2 higher on AP 0.7400 for the reference against 0.9600 for the best trial "
                     "(bootstrap std of the difference 0.0300), each by more than twice the bootstrap std: neither is better "
                     "on both; choose by the metric your use needs."]
