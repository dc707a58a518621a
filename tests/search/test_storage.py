"""Opening a storage: processes that create a new database at the same moment all get it."""

import multiprocessing

from tuner.errors import UserError
from tuner.search.storage import open_storage


def _open(url: str) -> str:
    try:
        open_storage(url)
        return "ok"
    except UserError as e:
        return str(e)


def test_processes_creating_one_new_sqlite_file_at_once_all_open_it(tmp_path):
    # Optuna creates its tables and version row without a lock: one of two start-study on a new
    # file failed with "UNIQUE constraint failed: alembic_version" or "table studies already exists"
    # (12 of 60 opens here before the retry).
    # spawn, not fork: a fork of this multi-threaded test process can inherit a lock another thread
    # held, and its child then waits on it forever (it hung a run of the suite)
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        for k in range(8):
            url = f"sqlite:///{tmp_path / f'new-{k}.db'}"
            assert pool.map(_open, [url] * 4) == ["ok"] * 4
