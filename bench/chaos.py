"""Chaos run: a study with several workers on PostgreSQL while random faults from a fixed seed hit
it, then a count of what survived, next to the same study run without faults.

    sudo PYTHONPATH=. .venv/bin/python bench/chaos.py --seed 0 --faults 24 --workers 3 --n-trials 200
    sudo PYTHONPATH=. .venv/bin/python bench/chaos.py --folds 5 --n-trials 40 --out bench/results/chaos-folds-5.md

Root, because it mounts the artifacts folder on a small tmpfs (to fill it), runs its own
PostgreSQL cluster as user postgres (so restarting it disturbs no other user of the machine's
server) and puts worker 0 in a network namespace (to cut its link; left out where namespaces are
unavailable). Faults: kill -9 a worker; SIGSTOP a worker past the grace period, then SIGCONT;
restart PostgreSQL (fast or immediate); damage a running trial's checkpoint and kill its worker;
fill the artifacts filesystem for a few seconds; take worker 0's link down past the grace period.
A worker that dies is started again, as a process supervisor would. Writes bench/results/chaos.md.
"""

import argparse
import os
import pwd
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from conftest import SMOKE  # noqa: E402
from test_netns import Forwarder, free_subnets, netns_unusable, sh  # noqa: E402

PG_BIN = next(Path("/usr/lib/postgresql").glob("*/bin"))
GRACE = 4
STUDY = ["--set", "data.n_samples=800", "--set", "data.image_size=24", "--set", "study.heartbeat_interval=1",
         "--set", f"study.grace_period={GRACE}", "--set", "study.db_retry_s=60"]


def as_postgres(*cmd: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True, capture_output=True, text=True, timeout=120)


class Postgres:
    """A private cluster on ``port``, trust auth, data in a temporary folder."""

    def __init__(self, port: int):
        self.dir = Path(tempfile.mkdtemp(prefix="tuner-chaos-pg-"))
        user = pwd.getpwnam("postgres")
        os.chown(self.dir, user.pw_uid, user.pw_gid)
        self.data, self.port = self.dir / "data", port
        as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust")
        self.ctl("start")
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"

    def ctl(self, action: str, mode: str = "fast") -> None:
        as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-m", mode,
                    "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=200", action)

    def close(self) -> None:
        self.ctl("stop", "immediate")
        subprocess.run(["rm", "-rf", str(self.dir)], check=True)


class Relay(Forwarder):
    """The tests' forwarder, but one that outlives a connection refused while PostgreSQL restarts."""

    def run(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed at teardown
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()  # the worker sees the database away, as over a real link
                continue
            self.socks += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self.pump, args=(src, dst), daemon=True).start()


class Link:
    """A network namespace with a veth link to this host and a forwarder to PostgreSQL at its end."""

    def __init__(self, pg_port: int):
        x = free_subnets(1)[0]
        self.ns, self.end = f"tuner-chaos-{os.getpid()}", f"tc{os.getpid() % 10**6}"
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.end, "type", "veth", "peer", "name", f"{self.end}i", "netns", self.ns)
        sh("ip", "addr", "add", f"10.231.{x}.1/24", "dev", self.end)
        sh("ip", "link", "set", self.end, "up")
        for cmd in (["ip", "addr", "add", f"10.231.{x}.2/24", "dev", f"{self.end}i"], ["ip", "link", "set", f"{self.end}i", "up"],
                    ["ip", "link", "set", "lo", "up"]):
            sh("ip", "netns", "exec", self.ns, *cmd)
        self.forwarder = Relay((f"10.231.{x}.1", pg_port), ("127.0.0.1", pg_port))
        self.forwarder.start()
        self.host = f"10.231.{x}.1"

    def set(self, state: str) -> None:
        sh("ip", "link", "set", self.end, state)

    def close(self) -> None:
        self.forwarder.close()
        sh("ip", "link", "del", self.end, check=False)
        sh("ip", "netns", "del", self.ns, check=False)


class Fleet:
    """``n`` worker processes of one study; one that dies (not exit 0) is started again."""

    def __init__(self, n: int, url: str, name: str, folder: Path, link: Link | None):
        self.url, self.name, self.folder, self.link = url, name, folder, link
        self.procs = [self.start(i) for i in range(n)]
        self.exits, self.done = [], threading.Event()
        self.thread = threading.Thread(target=self.supervise, daemon=True)
        self.thread.start()

    def start(self, i: int) -> subprocess.Popen:
        url, prefix = self.url, []
        if i == 0 and self.link:
            url, prefix = self.url.replace("127.0.0.1", self.link.host), ["ip", "netns", "exec", self.link.ns]
        with open(self.folder / f"worker-{i}.log", "a") as log:
            return subprocess.Popen([*prefix, sys.executable, "-m", "tuner", "worker", "--study-name", self.name,
                                     "--worker-index", str(i), "--threads", "1"], cwd=self.folder, stdout=log,
                                    stderr=subprocess.STDOUT, env={**os.environ, "TUNER_STORAGE": url, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT)})

    def supervise(self) -> None:
        while not self.done.is_set():
            for i, p in enumerate(self.procs):
                code = p.poll()
                if code is not None and code != 0 and not self.done.is_set():
                    self.exits.append(code)
                    time.sleep(1)
                    self.procs[i] = self.start(i)
            if all(p.poll() == 0 for p in self.procs):
                self.done.set()
            time.sleep(0.3)

    def stop(self) -> None:
        self.done.set()
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def fill(folder: Path, seconds: float) -> None:
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    time.sleep(seconds)
    filler.unlink()


def running_checkpoint(study, fleet: Fleet, artifacts: Path) -> tuple[int, Path] | None:
    """(worker index, checkpoint) of a trial under way that has saved one."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        origin = t.system_attrs.get("failed_trial", t.number)
        path = artifacts / fleet.name / "running" / f"trial-{origin}.pt"
        index = t.user_attrs.get("worker", ":").rpartition(":")[2]
        if path.exists() and index.isdigit() and int(index) < len(fleet.procs):
            return int(index), path
    return None


def inject(kind: str, rng: random.Random, fleet: Fleet, pg: Postgres, study, artifacts: Path) -> str:
    i = rng.randrange(len(fleet.procs))
    p = fleet.procs[i]
    if kind == "kill -9 a worker":
        p.send_signal(signal.SIGKILL)
    elif kind == "SIGSTOP past the grace period":
        p.send_signal(signal.SIGSTOP)
        time.sleep(GRACE + 3)
        p.send_signal(signal.SIGCONT)
    elif kind == "restart PostgreSQL":
        pg.ctl("restart", rng.choice(["fast", "immediate"]))
    elif kind == "corrupt a checkpoint, kill its worker":
        for _ in range(20):  # a trial under way that has saved an epoch
            found = running_checkpoint(study, fleet, artifacts)
            if found:
                break
            time.sleep(0.5)
        if found is None:
            return "no checkpoint to corrupt"
        i, path = found
        fleet.procs[i].send_signal(signal.SIGSTOP)
        path.write_bytes(rng.randbytes(4096))
        fleet.procs[i].send_signal(signal.SIGKILL)
    elif kind == "fill the artifacts filesystem":
        fill(artifacts, rng.uniform(2, 4))
    elif kind == "cut worker 0's link":
        fleet.link.set("down")
        time.sleep(GRACE + 3)
        fleet.link.set("up")
    return "done"


def run(args, name: str, faults: int, pg: Postgres, link: Link | None, folder: Path) -> dict:
    from tuner.learn.data import load_data
    from tuner.search.config import load_config
    from tuner.search.storage import open_storage
    from tuner.search.study import create_or_resume

    artifacts = folder / "artifacts"
    artifacts.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(artifacts)], check=True)
    study_file = folder / "chaos.toml"
    study_file.write_text(SMOKE.format(n_trials=args.n_trials, epochs=6, pruner="none", folds=args.folds))
    overrides = [s for s in STUDY if s != "--set"] + [f"study.artifacts={str(artifacts)!r}", f"study.seed={args.seed}"]
    cfg = load_config(study_file, overrides)
    data = load_data(cfg.data, seed=cfg.study.seed)
    create_or_resume(cfg.resolved(data.num_classes, data.positive_class, min(data.pool_counts())), pg.url, name, None, data.classes, data.class_counts())
    study = optuna.load_study(study_name=name, storage=open_storage(pg.url))  # pre-ping: PostgreSQL restarts
    kinds = ["kill -9 a worker", "SIGSTOP past the grace period", "restart PostgreSQL",
             "corrupt a checkpoint, kill its worker", "fill the artifacts filesystem"] + (["cut worker 0's link"] if link else [])
    rng, log = random.Random(args.seed), []
    start = time.time()
    fleet = Fleet(args.workers, pg.url, name, folder, link)
    try:
        time.sleep(8)  # the workers import torch and claim their first trials
        while len(log) < faults and not fleet.done.is_set():
            kind = kinds[len(log) % len(kinds)] if len(log) < len(kinds) else rng.choice(kinds)  # each kind at least once
            log.append((round(time.time() - start, 1), kind, inject(kind, rng, fleet, pg, study, artifacts)))
            print(f"{log[-1][0]:7.1f} s  {kind}: {log[-1][2]}", flush=True)
            fleet.done.wait(rng.uniform(0.5, 3))
        if not fleet.done.wait(args.timeout):
            print("the study did not finish in time", flush=True)
        wall = time.time() - start
    finally:
        fleet.stop()
        subprocess.run(["umount", "-l", str(artifacts)], check=False)
    tracebacks = sum(f.read_text().count("Traceback") for f in folder.glob("worker-*.log"))
    return {"wall": wall, "faults": log, "exits": fleet.exits, "tracebacks": tracebacks, **count(optuna.load_study(study_name=name, storage=pg.url))}


def count(study) -> dict:
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    lineage = lambda t: t.system_attrs.get("failed_trial", t.number)  # noqa: E731
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    per_lineage = {}
    for t in finished:
        per_lineage[lineage(t)] = per_lineage.get(lineage(t), 0) + 1
    retries = [t for t in finished if "failed_trial" in t.system_attrs]
    return {
        "target": study.user_attrs["n_trials"],
        "finished": len(finished),
        # a trial that reported epochs, failed, and was neither queued again nor failed by its own error
        "lost": sum(t.state == TrialState.FAIL and bool(t.intermediate_values) and t.number not in retried
                    and "error" not in t.user_attrs for t in trials),
        "stuck": sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials),
        "duplicates": sum(n - 1 for n in per_lineage.values()),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "resumed": sum("resumed_from_epoch" in t.user_attrs for t in retries),
        "restarted": sum("resumed_from_epoch" not in t.user_attrs for t in retries),
        "discarded": sum("checkpoint_discarded" in t.user_attrs for t in trials),
    }


def report(args, calm: dict, chaos: dict, netns: str | None) -> str:
    kinds = {}
    for _, kind, outcome in chaos["faults"]:
        if outcome == "done":
            kinds[kind] = kinds.get(kind, 0) + 1
    rows = [("trials finished / target", f"{calm['finished']} / {calm['target']}", f"{chaos['finished']} / {chaos['target']}"),
            *((k, calm[k], chaos[k]) for k in ("lost", "stuck", "duplicates")),
            ("failed (the killed or stopped trials, each queued again)", calm["failed"], chaos["failed"]),
            ("retries finished resumed from a checkpoint", calm["resumed"], chaos["resumed"]),
            ("retries finished restarted from epoch 1", calm["restarted"], chaos["restarted"]),
            ("checkpoints found unreadable and moved aside", calm["discarded"], chaos["discarded"]),
            ("worker exits other than 0 (started again)", len(calm["exits"]), len(chaos["exits"])),
            ("tracebacks in the workers' output", calm["tracebacks"], chaos["tracebacks"]),
            ("wall time, s", f"{calm['wall']:.0f}", f"{chaos['wall']:.0f}")]
    lines = [
        "# Chaos run", "",
        f"`sudo PYTHONPATH=. .venv/bin/python bench/chaos.py --seed {args.seed} --faults {args.faults} --workers {args.workers} "
        f"--n-trials {args.n_trials}" + (f" --folds {args.folds}" if args.folds > 1 else "") + f"`, on a private PostgreSQL cluster; "
        f"{args.workers} workers, 6 epochs a trial" + (f" of {args.folds} fold models" if args.folds > 1 else "") + ", "
        f"heartbeat 1 s, grace period {GRACE} s. " + (f"Link cuts left out: {netns}." if netns else "Worker 0 runs in a network namespace."), "",
        f"{sum(kinds.values())} faults injected ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}).", "",
        "| | fault-free | chaos |", "|---|---|---|", *(f"| {a} | {b} | {c} |" for a, b, c in rows), "",
        "Lost: a trial that reported epochs, failed, and was neither queued again nor failed by its own error. "
        "Stuck: RUNNING or WAITING at the end. Duplicates: more than one finished trial in one retry lineage.", "",
        "Faults in order (seconds from the start):", "",
        *(f"- {t} s: {kind}" + ("" if outcome == "done" else f" ({outcome})") for t, kind, outcome in chaos["faults"]), "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--faults", type=int, default=24)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--n-trials", type=int, default=200, help="enough that the study outlives the faults")
    ap.add_argument("--folds", type=int, default=1, help="data.folds of the study (its trials resume per trial either way)")
    ap.add_argument("--port", type=int, default=5499)
    ap.add_argument("--timeout", type=float, default=300, help="seconds to wait for the study after the last fault")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "chaos.md")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    netns = netns_unusable()
    pg = Postgres(args.port)
    link = None if netns else Link(args.port)
    try:
        tmp = Path(tempfile.mkdtemp(prefix="tuner-chaos-"))  # kept: the workers' logs
        calm = run(args, f"calm-{args.seed}", 0, pg, None, tmp / "calm")
        print(f"fault-free: {calm['finished']} trials in {calm['wall']:.0f} s", flush=True)
        chaos = run(args, f"chaos-{args.seed}", args.faults, pg, link, tmp / "chaos")
        print(f"worker logs in {tmp}", flush=True)
    finally:
        if link:
            link.close()
        pg.close()
    text = report(args, calm, chaos, netns)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
