"""A true multi-host run on one machine: two workers, each in its own network namespace, reach
PostgreSQL only over their own virtual link (veth). Cutting one worker's link mid-trial loses
nothing: the other worker retries the trial from its checkpoint on the shared artifacts folder,
and the study ends with exactly n_trials complete trials, one per lineage. The cut worker stops
with one `error:` line once its database calls time out; if its link comes back first, after its
trial was retried elsewhere, it must drop that trial rather than finish it twice."""

import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from conftest import write_study

EPOCHS = 4
# Epochs of half a second or more, so that the cut lands while worker A trains, not while it writes.
SETTINGS = ["--set", "data.n_samples=2400", "--set", "data.image_size=32", "--set", "study.heartbeat_interval=1",
            "--set", "study.grace_period=3"]


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=30)


def netns_unusable() -> str | None:
    """Why this machine cannot make a network namespace with a veth link, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe, end = f"tuner-probe-{os.getpid()}", f"tnp{os.getpid() % 10**6}"
    try:
        sh("ip", "netns", "add", probe)
        sh("ip", "link", "add", end, "type", "veth", "peer", "name", f"{end}i", "netns", probe)
    except (OSError, subprocess.SubprocessError) as e:
        return f"cannot make a network namespace with a veth link: {getattr(e, 'stderr', None) or e}".strip()
    finally:
        sh("ip", "link", "del", end, check=False)
        sh("ip", "netns", "del", probe, check=False)
    return None


class Forwarder(threading.Thread):
    """PostgreSQL listens on 127.0.0.1 only; this stands in for it at the host end of one link and
    remembers who connected. Like a server on another machine, it never learns that a cut peer is gone."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]):
        super().__init__(daemon=True)
        self.target, self.peers = target, []
        self.listener = socket.create_server(listen)
        self.socks = [self.listener]

    def run(self):
        while True:
            try:
                client, peer = self.listener.accept()
                server = socket.create_connection(self.target)
            except OSError:
                return  # closed at teardown
            self.peers.append(peer[0])
            self.socks += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self.pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def pump(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            shut(s)

    def close(self):
        for s in self.socks:
            shut(s)
            s.close()


def shut(s: socket.socket) -> None:
    """Wake a thread blocked on the socket: close() alone leaves a blocked accept() listening."""
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def free_subnets(count: int) -> list[int]:
    """Third octets X of 10.231.X.0/24 that no interface here uses yet."""
    used, start = sh("ip", "-o", "-4", "addr").stdout, os.getpid() % 250
    return [x for x in ((start + i) % 250 + 1 for i in range(250)) if f"10.231.{x}." not in used][:count]


@pytest.fixture
def hosts(postgres_url):
    """Two namespaces, each with a veth link to this host (the database's) and a forwarder at its
    host end; a list of dicts: ns, host_end, peer (the address inside), url, forwarder."""
    reason = netns_unusable()
    if reason:
        pytest.skip(reason)
    db = make_url(postgres_url)
    made = []
    try:
        for i, x in enumerate(free_subnets(2)):
            ns, end = f"tuner-{os.getpid()}-{i}", f"tn{os.getpid() % 10**6}h{i}"
            h = {"ns": ns, "host_end": end, "peer": f"10.231.{x}.2"}
            made.append(h)
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", end, "type", "veth", "peer", "name", f"{end}i", "netns", ns)
            sh("ip", "addr", "add", f"10.231.{x}.1/24", "dev", end)
            sh("ip", "link", "set", end, "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"10.231.{x}.2/24", "dev", f"{end}i")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", f"{end}i", "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            h["forwarder"] = Forwarder((f"10.231.{x}.1", 5432), (db.host or "127.0.0.1", db.port or 5432))
            h["forwarder"].start()
            h["url"] = db.set(host=f"10.231.{x}.1", port=5432).render_as_string(hide_password=False)
        yield made
    finally:
        for h in made:
            if "forwarder" in h:
                h["forwarder"].close()
            sh("ip", "link", "del", h["host_end"], check=False)  # takes the end inside with it
            sh("ip", "netns", "del", h["ns"], check=False)


@pytest.fixture
def study_name(postgres_url):
    name = f"netns-{uuid.uuid4().hex[:8]}"
    yield name
    try:
        optuna.delete_study(study_name=name, storage=postgres_url)
    except KeyError:
        pass


@pytest.fixture
def procs(hosts, study_name):
    """Processes to kill at teardown, before their namespaces and study go away."""
    started = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=30)


def wait_for(what: str, check, timeout: float, dump):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{dump()}")


class Run:
    """A watching driver on this host, worker A in the first namespace and, once A holds a trial,
    worker B in the second; ``cut()`` takes A's link down after A's trial reported two epochs."""

    def __init__(self, hosts, name, procs, postgres_url, tmp_path, db_retry_s):
        self.hosts, self.name, self.procs, self.url, self.tmp = hosts, name, procs, postgres_url, tmp_path
        self.logs = {}
        study_file = write_study(tmp_path, n_trials=2, epochs=EPOCHS, pruner="none")
        self.driver = self.start("driver", sys.executable, "-m", "tuner", "start-study", str(study_file),
                                 "--workers", "0", "--storage", postgres_url, "--study-name", name, *SETTINGS,
                                 "--set", f"study.db_retry_s={db_retry_s}")
        wait_for("the study", lambda: name in optuna.get_all_study_names(postgres_url), 60, self.dump)
        self.study = optuna.load_study(study_name=name, storage=postgres_url)
        self.a = self.worker("a", hosts[0], "1")
        # B joins once A holds a trial: started together, B could claim both trials while A imports.
        wait_for("worker A's trial", lambda: self.a_trial(0), 60, self.dump)
        self.b = self.worker("b", hosts[1], "2")

    def start(self, key, *cmd, url=""):
        # The same cwd for all: the artifacts folder there stands for a volume the hosts share.
        self.logs[key] = self.tmp / f"{key}.log"
        with open(self.logs[key], "w") as log:
            self.procs.append(subprocess.Popen(cmd, cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT, text=True,
                                               env={**os.environ, "PYTHONWARNINGS": "ignore", "TUNER_STORAGE": url,
                                                    "PYTHONFAULTHANDLER": "1"}))  # a crash shows every thread
        return self.procs[-1]

    def worker(self, key, host, index):
        return self.start(key, "ip", "netns", "exec", host["ns"], sys.executable, "-m", "tuner", "worker",
                          "--study-name", self.name, "--worker-index", index, "--threads", "1", url=host["url"])

    def dump(self):
        parts = zip(self.logs.items(), self.procs)
        return "\n".join(f"--- {k} (exit {p.poll()})\n{log.read_text()}" for (k, log), p in parts)

    def a_trial(self, epochs):
        for t in self.study.get_trials(states=(TrialState.RUNNING,)):
            if t.user_attrs.get("worker", "").endswith(":1") and t.user_attrs.get("epochs", 0) >= epochs:
                return t

    def cut(self):
        # "epochs" is the last write of A's report of an epoch: cut at once, while A trains the next
        # one. A cut inside one of A's transactions would leave its server session holding a lock on
        # the trial row, and the sweep that fails the trial would wait for it (a known limit).
        trial = wait_for("worker A's trial to finish 2 epochs", lambda: self.a_trial(2), 60, self.dump)
        sh("ip", "link", "set", self.hosts[0]["host_end"], "down")
        self.cut_at = time.time()
        assert trial.user_attrs["epochs"] < EPOCHS, "worker A finished its trial before the cut; make epochs slower"
        return trial.number

    def finish(self, a_timeout):
        """B takes over A's trial after the grace period and finishes the study; A stops."""
        assert self.b.wait(timeout=120) == 0, self.dump()
        assert self.driver.wait(timeout=60) == 0, self.dump()
        code = self.a.wait(timeout=a_timeout)
        print(f"worker A exited {code}, {time.time() - self.cut_at:.1f} s after the cut")
        return code, self.logs["a"].read_text()

    def assert_nothing_lost(self, number, retried_on=(":2",)):
        for h in self.hosts:  # each worker reached the database through its own link, and only through it
            assert h["forwarder"].peers and set(h["forwarder"].peers) == {h["peer"]}, h["forwarder"].peers
        trials = optuna.load_study(study_name=self.name, storage=self.url).trials
        failed = trials[number]
        assert failed.state == TrialState.FAIL, self.dump()
        (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == number]
        assert retry.state == TrialState.COMPLETE and retry.user_attrs["worker"].endswith(retried_on), self.dump()
        # A saves its checkpoint before it reports an epoch, so the retry starts at least there.
        assert retry.user_attrs["resumed_from_epoch"] >= max(failed.intermediate_values) >= 2, self.dump()
        assert sorted(retry.intermediate_values) == list(range(1, EPOCHS + 1))  # no gap, no repeat
        assert sum(t.state == TrialState.COMPLETE for t in trials) == 2, self.dump()
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], self.dump()
        lineages = [t.system_attrs.get("failed_trial", t.number) for t in trials if t.state == TrialState.COMPLETE]
        assert len(lineages) == len(set(lineages)), self.dump()


def test_cut_link_mid_trial_loses_nothing(hosts, study_name, procs, postgres_url, tmp_path):
    # Inside a namespace 127.0.0.1 is its own loopback, with no server: the link is the only way.
    probe = sh("ip", "netns", "exec", hosts[0]["ns"], sys.executable, "-c",
               "import socket; socket.create_connection(('127.0.0.1', 5432), timeout=3)", check=False)
    assert probe.returncode != 0 and "ConnectionRefused" in probe.stderr, probe.stderr

    run = Run(hosts, study_name, procs, postgres_url, tmp_path, db_retry_s=5)
    number = run.cut()
    # A's database calls fail after the TCP user timeout (30 s), past study.db_retry_s (5 s).
    code, out = run.finish(a_timeout=90)
    run.assert_nothing_lost(number)
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the study database stayed unreachable" in errors[0], run.dump()
    assert code == 2 and "Traceback" not in out, run.dump()


def test_link_back_after_the_trial_was_retried_elsewhere(hosts, study_name, procs, postgres_url, tmp_path):
    run = Run(hosts, study_name, procs, postgres_url, tmp_path, db_retry_s=60)
    number = run.cut()
    wait_for("the sweep to fail A's trial", lambda: run.study.trials[number].state == TrialState.FAIL, 30, run.dump)
    sh("ip", "link", "set", hosts[0]["host_end"], "up")  # within db_retry_s: A's calls go through again
    code, out = run.finish(a_timeout=90)
    run.assert_nothing_lost(number, retried_on=(":1", ":2"))  # A, back in time, may claim the retry itself
    # A's next report meets its trial already failed: A drops it (the retry runs on B) and goes on.
    assert code == 0 and "Traceback" not in out, run.dump()
    assert "was failed by a heartbeat sweep while this worker was cut off" in out, run.dump()
