"""A throwaway PostgreSQL server for the store tests, from Debian's ``postgresql`` package.

``.ci/run`` starts one (``python tests/postgres_server.py start DIR`` prints the URL) and exports
it as ADVARENA_TEST_POSTGRES_URL; without that variable the tests start their own in a temporary
folder. initdb refuses to run as root, so as root the server runs as the ``postgres`` user."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

ENV_URL = "ADVARENA_TEST_POSTGRES_URL"


def server_binaries() -> Path:
    """The folder holding initdb and pg_ctl (the newest Debian cluster version, else PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("no PostgreSQL server binaries (initdb): install Debian's package, "
                           "apt-get install -y postgresql (.ci/run does)")
    return Path(initdb).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_server_user(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


def start(folder: Path) -> str:
    """initdb a cluster in ``folder``/data, start it on a free loopback port, return its URL."""
    binaries = server_binaries()
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data"
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    subprocess.run(_as_server_user([str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                                    "--no-sync"]), check=True, stdout=subprocess.DEVNULL)
    port = _free_port()
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run(_as_server_user([str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l",
                                    str(folder / "server.log"), "-w", "start"]), check=True, stdout=subprocess.DEVNULL)
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


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
