"""What ``tuner best`` says of the test split, read from a real SQLite study."""

import optuna
from optuna.distributions import FloatDistribution

from tuner import keys
from tuner.show.results import notes_on_test

SPACE = {"gamma": FloatDistribution(0.0, 5.0), "alpha": FloatDistribution(0.05, 0.95)}


def study_with(tmp_path, best_test, refs_test):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/t.db", study_name="s", direction="maximize")
    for value, params, label in ((0.90, {"gamma": 0.0, "alpha": 0.5}, "cross-entropy"),
                                 (0.91, {"gamma": 2.0, "alpha": 0.25}, "focal default"),
                                 (0.93, {"gamma": 1.2, "alpha": 0.6}, None)):
        attrs = {keys.REFERENCE: label} if label else {}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=SPACE, value=value, user_attrs=attrs))
    study.set_user_attr(keys.BEST_TEST, best_test)
    study.set_user_attr(keys.REFERENCES_TEST, refs_test)
    return study


def test_a_reference_that_scores_higher_on_the_test_split_is_named_with_the_metric_it_wins(tmp_path):
    study = study_with(tmp_path, best_test={"trial": 2, "average_precision": 0.95, "balanced_accuracy": 0.97},
                       refs_test=[{"trial": 0, "average_precision": 0.96, "balanced_accuracy": 0.96},
                                  {"trial": 1, "average_precision": 0.94, "balanced_accuracy": 0.97}])
    notes = notes_on_test(study)
    assert len(notes) == 1
    assert "reference trial 0 (cross-entropy)" in notes[0] and "AP 0.9600 against 0.9500" in notes[0]
    assert "balanced accuracy" not in notes[0]  # it lost there, and a tie is no win


def test_no_note_when_the_best_trial_wins_or_the_stored_check_is_of_an_earlier_best(tmp_path):
    study = study_with(tmp_path, {"trial": 2, "average_precision": 0.97, "balanced_accuracy": 0.98},
                       [{"trial": 0, "average_precision": 0.96, "balanced_accuracy": 0.96}])
    assert notes_on_test(study) == []
    study.set_user_attr(keys.BEST_TEST, {"trial": 1, "average_precision": 0.5, "balanced_accuracy": 0.5})
    assert notes_on_test(study) == []
