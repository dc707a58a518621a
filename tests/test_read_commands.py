"""Commands that read (status, best, report, export, list, dashboard, and worker and delete, which
need a study) never create a storage: no SQLite file, no tables; one error line says why."""

import sqlite3
import uuid

import pytest
import sqlalchemy

from conftest import assert_user_error, tuner

READERS = [["status"], ["best"], ["report"], ["export"], ["list"], ["dashboard", "--port", "0"], ["worker"],
           ["delete", "smoke", "--yes"], ["status", "--study-name", "smoke"]]


@pytest.mark.parametrize("cmd", READERS, ids=lambda c: " ".join(c))
def test_in_an_empty_folder_a_read_command_creates_nothing(tmp_path, cli, cmd):
    proc = cli(*cmd, cwd=tmp_path)
    assert_user_error(proc, "no study exists in sqlite:///tuner.db yet", "tuner start-study")
    assert list(tmp_path.iterdir()) == []


def test_a_separate_process_creates_nothing_either(tmp_path):
    assert_user_error(tuner("status", cwd=tmp_path), "no study exists")
    assert list(tmp_path.iterdir()) == []


def test_an_sqlite_file_without_tables_gets_none(tmp_path, cli):
    sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE notes (x)").connection.commit()
    for cmd in (["list"], ["status"], ["export", "-f", "json"]):
        proc = cli(*cmd, "--storage", f"sqlite:///{tmp_path / 'other.db'}", cwd=tmp_path)
        assert_user_error(proc, "no study exists", "no Optuna tables")
    tables = sqlite3.connect(tmp_path / "other.db").execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    assert tables == [("notes",)]


def test_an_empty_postgresql_database_gets_no_tables(postgres_url, cli, tmp_path):
    admin = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    name = f"tuner_empty_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    url = sqlalchemy.make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    try:
        for cmd in (["list"], ["status"], ["best", "--json"]):
            assert_user_error(cli(*cmd, "--storage", url, cwd=tmp_path), "no study exists", "no Optuna tables")
        engine = sqlalchemy.create_engine(url)
        with engine.connect() as conn:
            assert sqlalchemy.inspect(conn).get_table_names() == []
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()
