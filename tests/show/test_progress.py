"""The arithmetic of the progress view: trials per minute in this run, and the ETA from the
durations of the finished trials shared by the workers."""

from tuner.show.progress import clock, failed_words, pace, trial_line


def snapshot(finished, target, durations, failed=()):
    ended = [{"state": "COMPLETE", "duration_s": d} for d in durations] + [{"state": "FAIL", "duration_s": d} for d in failed]
    return {"finished": finished, "target": target, "ended": ended}


def test_eta_is_the_remaining_trials_times_the_mean_duration_over_the_workers():
    s = snapshot(finished=3, target=10, durations=[10, 20, 30], failed=[1000])  # a failed trial's time is not a trial's
    assert pace(s, elapsed=120, finished_before=0, parallel=2) == "elapsed 0:02:00, 1.5 trials/min, ETA 0:01:10"


def test_rate_counts_only_the_trials_of_this_run():
    s = snapshot(finished=5, target=5, durations=[60] * 5)
    assert pace(s, elapsed=30, finished_before=4, parallel=1) == "elapsed 0:00:30, 2.0 trials/min, ETA 0:00:00"


def test_no_eta_before_a_trial_has_finished_or_while_no_worker_runs():
    assert pace(snapshot(0, 4, []), elapsed=0.4, finished_before=0, parallel=2).endswith("ETA - (no finished trial yet)")
    assert pace(snapshot(2, 4, [10, 20]), elapsed=60, finished_before=0, parallel=0).endswith("ETA - (no worker running)")


def test_clock_and_trial_line():
    assert clock(3725.9) == "1:02:05"
    line = trial_line({"trial": 7, "state": "PRUNED", "value": 0.5, "params": "gamma=1.000 alpha=0.250", "epochs": 1,
                       "duration_s": 2.04, "note": "pruner at epoch 1"})
    assert line == "trial 7 pruned 0.5000: gamma=1.000 alpha=0.250, 1 epoch, 2.0 s (pruner at epoch 1)"
    stopped = trial_line({"trial": 1, "state": "FAIL", "value": None, "params": "gamma=2.000 alpha=0.250", "epochs": 3,
                          "duration_s": 7.91, "queued_as": 4, "note": "interrupted"})
    assert stopped == "trial 1 stopped, queued again as trial 4: gamma=2.000 alpha=0.250, 3 epochs, 7.9 s (interrupted)"


def test_failed_trials_that_another_carries_on_are_not_counted_as_failed():
    assert failed_words({"FAIL": 3, "QUEUED_AGAIN": 2}) == "1 failed, 2 queued again to resume"
    assert failed_words({"FAIL": 1, "QUEUED_AGAIN": 0}) == "1 failed"


def test_a_trial_another_machine_ran_is_named_with_its_worker():
    import io

    from rich.console import Console

    from tuner.search.study import worker_name
    from tuner.show.progress import Progress

    out = io.StringIO()
    progress = Progress("lines", 1, Console(file=out, width=200))
    s = {"target": 4, "finished": 0, "complete": 0, "pruned": 0, "running": 0, "waiting": 0, "failed": 0, "queued_again": 0,
         "best": None, "workers": [], "ended": []}
    progress.update(s)
    trial = {"state": "FAIL", "value": None, "params": "gamma=1.000 alpha=0.500", "epochs": 1, "duration_s": 1.0,
             "queued_as": None, "note": "an error"}
    progress.update({**s, "ended": [{**trial, "trial": 0, "worker": "elsewhere:3"}, {**trial, "trial": 1, "worker": worker_name(0)}]})
    lines = out.getvalue().splitlines()
    assert any(line.endswith("trial 0 fail: gamma=1.000 alpha=0.500, 1 epoch, 1.0 s (an error), by worker elsewhere:3") for line in lines)
    assert any(line.endswith("trial 1 fail: gamma=1.000 alpha=0.500, 1 epoch, 1.0 s (an error)") for line in lines)  # ours


def test_a_long_first_decode_is_said_once_and_counted_and_a_quick_one_adds_no_line():
    import io

    from rich.console import Console

    from tuner.show.progress import Decoding
    from tuner.show.progress import Progress

    out = io.StringIO()
    progress = Progress("lines", 1, Console(file=out, width=200))
    slow = Decoding(progress, after_s=0)
    for done in (0, 50, 100):
        slow(done, 100)
    assert progress.phase == "decoding images: 100 of 100"
    said = [line for line in out.getvalue().splitlines() if "decoding" in line]
    assert len(said) == 1 and said[0].endswith("decoding 100 images, once: later runs and the workers read them from the cache")
    out = io.StringIO()
    quick = Decoding(Progress("lines", 1, Console(file=out, width=200)))
    quick(0, 100)
    quick(100, 100)
    assert out.getvalue() == ""
