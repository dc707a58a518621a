"""The driver's view of a study whose workers run elsewhere (``start-study --workers 0``): progress
until the study has its finished trials, sweeping the trials of dead workers so they are retried."""

import time

from tuner.search.liveness import DbRetry
from tuner.search.study import open_for_worker, sweep, target
from tuner.show.progress import Progress, snapshot


def watch(url: str, name: str, progress: Progress, poll_s: float = 2.0) -> None:
    study, cfg, storage = open_for_worker(url, name, worker_index=0)
    db = DbRetry(cfg.study.db_retry_s, "the watching driver", progress.say)
    progress.epochs = cfg.train.epochs

    def look():
        if storage.get_heartbeat_interval():
            sweep(study, cfg, storage)
        return snapshot(study, target(study, cfg))

    while True:
        s = db("watching", look)
        progress.update(s)
        if s["finished"] >= s["target"]:
            return
        time.sleep(poll_s)
