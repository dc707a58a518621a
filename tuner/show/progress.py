"""What the driver shows on stderr while a study runs: on a terminal a live view (elapsed time,
trials per minute, ETA, each worker's trial) with one line per finished trial kept above it; in
logs and CI the same as plain timestamped lines, where the workers' own lines already tell the
trials they finished; nothing with --quiet."""

import contextlib
import time
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from tuner import keys

if TYPE_CHECKING:
    import optuna


def snapshot(study: "optuna.Study", target: int) -> dict:
    """Counts, the best trial so far, the ended trials and each worker's running trial, from the storage."""
    # Imported here: the first frame is drawn before Optuna (about a second) is loaded.
    from optuna.trial import TrialState

    from tuner.search.study import describe_trial, n_queued_again, queued_again, trial_duration, trial_note

    trials = study.get_trials(deepcopy=False)
    count = {s: sum(t.state == s for t in trials) for s in TrialState}
    again = queued_again(trials)
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    best = max(done, key=lambda t: t.value, default=None)
    running = sorted((t.user_attrs.get(keys.WORKER, "?"), t.number, t.user_attrs.get(keys.EPOCHS, 0), describe_trial(t))
                     for t in trials if t.state == TrialState.RUNNING)
    ended = [{"trial": t.number, "state": t.state.name, "value": t.value, "params": describe_trial(t),
              "epochs": t.user_attrs.get(keys.EPOCHS, 0), "duration_s": trial_duration(t), "worker": t.user_attrs.get(keys.WORKER),
              "queued_as": again.get(t.number) if t.state == TrialState.FAIL else None,
              "note": trial_note(t) or None}
             for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
    return {
        "target": target,
        "finished": count[TrialState.COMPLETE] + count[TrialState.PRUNED],
        "complete": count[TrialState.COMPLETE],
        "pruned": count[TrialState.PRUNED],
        "running": count[TrialState.RUNNING],
        "waiting": count[TrialState.WAITING],
        "failed": count[TrialState.FAIL],
        "queued_again": n_queued_again(trials),
        "best": None if best is None else (best.number, best.value, describe_trial(best)),
        "workers": running,
        "ended": ended,
    }


def summary_line(s: dict) -> str:
    best = "-" if s["best"] is None else "trial {} = {:.4f} ({})".format(*s["best"])
    return (f"{s['finished']}/{s['target']} finished ({s['complete']} complete, {s['pruned']} pruned), "
            f"{s['running']} running, {failed_words({'FAIL': s['failed'], 'QUEUED_AGAIN': s['queued_again']})}; best {best}")


def failed_words(c: dict[str, int]) -> str:
    """E.g. "0 failed, 2 queued again to resume" from ``tuner.search.study.counts``: a failed trial
    that another carries on from its checkpoint lost nothing."""
    again = c.get("QUEUED_AGAIN", 0)
    return f"{c['FAIL'] - again} failed" + (f", {again} queued again to resume" if again else "")


def counts_words(c: dict[str, int], every: bool = False) -> str:
    """E.g. "4 complete, 8 pruned, 1 running, 0 failed": running and waiting trials when there are
    any (``every``: always, as the status table's line has them)."""
    busy = "".join(f", {c.get(k, 0)} {k.lower()}" for k in ("RUNNING", "WAITING") if every or c.get(k))
    return f"{c['COMPLETE']} complete, {c['PRUNED']} pruned{busy}, {failed_words(c)}"


def cut_text(v: float, digits: int = 4) -> str:
    """A threshold or probability with its digits: per-class thresholds can be 4e-05, which 0.000 hides."""
    return f"{v:.{digits}f}" if v == 0 or abs(v) >= 10 ** -(digits - 1) else f"{v:.2e}"


def cut_of(positive: str | None = None, detect: str | None = None) -> str:
    """What a threshold cuts, in the words status, export and predict --json give as threshold_of: the
    positive class's probability (two classes), the class to detect's ratio (more), else nothing."""
    if positive:
        return f"on the calibrated probability of {positive!r}"
    if detect:
        return f"on p({detect}) / the largest other class's probability"
    return "none: the most probable class is decided"


def trial_line(t: dict) -> str:
    value = "" if t["value"] is None else f" {t['value']:.4f}"
    took = "" if t["duration_s"] is None else f", {t['duration_s']:.1f} s"
    note = f" ({t['note']})" if t["note"] else ""
    how = t["state"].lower() if t.get("queued_as") is None else f"stopped, queued again as trial {t['queued_as']}"
    return (f"trial {t['trial']} {how}{value}: {t['params']}, "
            f"{t['epochs']} epoch{'s' * (t['epochs'] != 1)}{took}{note}")


def clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def pace(s: dict, elapsed: float, finished_before: int, parallel: int) -> str:
    """Elapsed time, trials finished per minute in this run, and the time left: the remaining
    trials times the mean duration of the finished ones, shared by the workers."""
    rate = (s["finished"] - finished_before) / (elapsed / 60) if elapsed > 0 else 0.0
    durations = [t["duration_s"] for t in s["ended"] if t["state"] != "FAIL" and t["duration_s"] is not None]
    left = max(0, s["target"] - s["finished"])
    if left == 0:
        eta = "0:00:00"
    elif parallel == 0:  # a watching driver while no worker runs a trial
        eta = "- (no worker running)"
    elif durations:
        eta = clock(left * sum(durations) / len(durations) / parallel)
    else:
        eta = "- (no finished trial yet)"
    return f"elapsed {clock(elapsed)}, {rate:.1f} trials/min, ETA {eta}"



class Decoding:
    """An image folder's first decode can take minutes: counted in the live view, and said in a line
    once it has taken ``after_s`` (a quick one adds no line, above an error about the images say)."""

    def __init__(self, progress: "Progress", after_s: float = 3.0):
        self.progress, self.after_s, self.start, self.said = progress, after_s, None, False

    def __call__(self, done: int, total: int) -> None:
        self.start = self.start or time.monotonic()
        if not self.said and time.monotonic() - self.start >= self.after_s:
            self.said = True
            self.progress.say(f"decoding {total:,} images, once: later runs and the workers read them from the cache")
        self.progress.step(f"decoding images: {done:,} of {total:,}")

class Progress:
    """``mode``: "live" (a terminal), "lines" (logs) or "quiet". ``workers``: how many run the
    trials in parallel (None: count the running trials). The clock starts at construction."""

    def __init__(self, mode: str, workers: int | None = None, console: Console | None = None):
        self.mode, self.workers, self.epochs = mode, workers, None
        self.first_worker = 0  # this run's workers have indices first_worker, first_worker + 1, ...
        self.console = console or Console(stderr=True, highlight=False)
        self.started = time.monotonic()
        self.phase, self.s, self.shown, self.before, self.last = "starting", None, None, 0, None
        self.live = (Live(console=self.console, get_renderable=self._view, refresh_per_second=2, redirect_stdout=False,
                          redirect_stderr=False) if mode == "live" else None)

    def __enter__(self):
        if self.live:
            self.live.start(refresh=True)
        return self

    def __exit__(self, kind, *exc):
        if self.live:
            self.live.transient = kind is not None  # an error line alone, not under a stale frame
            with self._unless_gone():
                self.live.stop()

    @contextlib.contextmanager
    def _unless_gone(self):
        """A terminal that closed (SIGHUP) fails every write (EIO): from then on show nothing, so the
        driver still stops its workers and exits as the signal says."""
        try:
            yield
        except OSError:
            self.mode, self.live = "quiet", None

    def say(self, text: str) -> None:
        """A line for the history: above the live view, or a timestamped log line."""
        with self._unless_gone():
            if self.mode == "live":
                self.console.print(text, soft_wrap=True)
            elif self.mode == "lines":
                self.console.print(time.strftime("%H:%M:%S"), text, soft_wrap=True)

    def step(self, phase: str) -> None:
        """What the driver does before the first snapshot, shown with the clock."""
        self.phase = phase
        if self.live:
            with self._unless_gone():
                self.live.refresh()

    def update(self, s: dict) -> None:
        self.s = s  # first: printing a line above the live view redraws it, from this
        if self.shown is None:
            self.shown = {t["trial"] for t in s["ended"]}
            self.before = s["finished"]
            if self.shown:
                self.say(f"{s['finished']} trial{'s' * (s['finished'] != 1)} finished before this run, "
                         + failed_words({"FAIL": s["failed"], "QUEUED_AGAIN": s["queued_again"]}))
        for t in s["ended"]:
            if t["trial"] not in self.shown:
                self.shown.add(t["trial"])
                if not self._told_by_worker(t):
                    self.say(trial_line(t) + ("" if self._ours(t) or not t["worker"] else f", by worker {t['worker']}"))
        if self.live:
            with self._unless_gone():
                self.live.refresh()
        elif self.mode == "lines":
            key = (s["finished"], s["running"], s["failed"], s["best"])
            if key != self.last:
                self.say(f"{summary_line(s)}; {self._pace()}")
                self.last = key

    def _told_by_worker(self, t: dict) -> bool:
        """In log lines, this run's own workers print their finished trials on the same stream."""
        return self.mode == "lines" and t["state"] in ("COMPLETE", "PRUNED") and self._ours(t)

    def _ours(self, t: dict) -> bool:
        """Whether one of this run's workers ran the trial (another run's, or another machine's, is named)."""
        if self.workers is None:
            return False
        from tuner.search.study import worker_name

        return t["worker"] in {worker_name(i) for i in range(self.first_worker, self.first_worker + self.workers)}

    def _pace(self) -> str:
        parallel = self.workers if self.workers is not None else self.s["running"]
        return pace(self.s, time.monotonic() - self.started, self.before, parallel)

    def _view(self) -> Group:
        if self.s is None:
            return Group(Text(f"elapsed {clock(time.monotonic() - self.started)}: {self.phase}"))
        table = Table()
        for name, justify in (("worker", "left"), ("trial", "right"), ("epoch", "right"), ("params", "left")):
            table.add_column(name, justify=justify)
        for worker, number, epoch, params in self.s["workers"]:
            table.add_row(worker, str(number), f"{epoch}/{self.epochs}" if self.epochs else str(epoch), params)
        return Group(Text(summary_line(self.s)), Text(self._pace()), table)
