"""What the driver shows while a study runs: a live table on a terminal, plain timestamped lines
in logs and CI, nothing with --quiet."""

import time

import optuna
from optuna.trial import TrialState
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from tuner import keys
from tuner.search.study import describe_params


def snapshot(study: optuna.Study, target: int) -> dict:
    """Counts, the best trial so far and each worker's running trial, from the storage."""
    trials = study.get_trials(deepcopy=False)
    count = {s: sum(t.state == s for t in trials) for s in TrialState}
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    best = max(done, key=lambda t: t.value, default=None)
    running = sorted((t.user_attrs.get(keys.WORKER, "?"), t.number, t.user_attrs.get(keys.EPOCHS, 0))
                     for t in trials if t.state == TrialState.RUNNING)
    return {
        "target": target,
        "finished": count[TrialState.COMPLETE] + count[TrialState.PRUNED],
        "complete": count[TrialState.COMPLETE],
        "pruned": count[TrialState.PRUNED],
        "running": count[TrialState.RUNNING],
        "waiting": count[TrialState.WAITING],
        "failed": count[TrialState.FAIL],
        "best": None if best is None else (best.number, best.value, describe_params(best.params)),
        "workers": running,
    }


def summary_line(s: dict) -> str:
    best = "-" if s["best"] is None else "trial {} = {:.4f} ({})".format(*s["best"])
    return (f"{s['finished']}/{s['target']} finished ({s['complete']} complete, {s['pruned']} pruned), "
            f"{s['running']} running, {s['failed']} failed; best {best}")


class Progress:
    """``mode``: "live" (a terminal), "lines" (logs) or "quiet"."""

    def __init__(self, mode: str, epochs: int, console: Console | None = None):
        self.mode, self.epochs = mode, epochs
        self.console = console or Console()
        self.last = None
        self.live = Live(console=self.console, auto_refresh=False) if mode == "live" else None

    def __enter__(self):
        if self.live:
            self.live.start()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.live.stop()

    def update(self, s: dict) -> None:
        if self.mode == "live":
            self.live.update(self._table(s), refresh=True)
        elif self.mode == "lines":
            key = (s["finished"], s["running"], s["failed"], s["best"])
            if key != self.last:
                print(time.strftime("%H:%M:%S"), summary_line(s), flush=True)
                self.last = key

    def _table(self, s: dict) -> Group:
        table = Table()
        table.add_column("worker")
        table.add_column("trial", justify="right")
        table.add_column("epoch", justify="right")
        for worker, number, epoch in s["workers"]:
            table.add_row(worker, str(number), f"{epoch}/{self.epochs}")
        return Group(Text(summary_line(s)), table)
