"""Several nodes on this machine, for the failover bench and the tests: a Redis of their
own, whole nodes (``switchboard run``) on free ports of 127.0.0.1, ``switchboard front``
(Kamailio) in front of them, and a node's crash (SIGKILL of its whole process tree).

Every process here is a :class:`~switchboard.base.children.ChildProcess`, stopped by PID.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psycopg
import redis

from dialog.runtime import share_trained_model
from switchboard.base.children import ChildError, ChildProcess, log_probe
from switchboard.base.processes import descendants, free_port
from switchboard.base.settings import PROJECT_ROOT

NODE_START_TIMEOUT_S = 240.0
NODE_STOP_GRACE_S = 60.0
FRONT_START_TIMEOUT_S = 30.0
REDIS_START_TIMEOUT_S = 10.0
POSTGRES_START_TIMEOUT_S = 30.0
PORT_TRIES = 200


def free_udp_port(step: int = 1) -> int:
    """A port on 127.0.0.1 free for UDP and TCP (SIP listens on both), with ``step - 1``
    such ports after it (an RTP range). ``switchboard.base.processes.free_port`` finds one
    port of one kind."""
    for _ in range(PORT_TRIES):
        port = free_port(socket.SOCK_DGRAM)
        if port + step < 65535 and all(_free(p) for p in range(port, port + step)):
            return port
    raise RuntimeError("no free port range on 127.0.0.1")


def _free(port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


class RedisServer:
    """A redis-server of its own (the installed binary) on a free port of 127.0.0.1,
    without persistence, its files in ``directory``; it can be stopped and started again
    on the same port (a Redis outage)."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ChildError("redis-server is needed: apt-get install redis-server")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=1)
        self._process = ChildProcess(
            "redis-server",
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(directory)],
            log_path=directory / f"redis-{self.port}.log",
            healthy=lambda: None if self._pings() else "no PONG yet",
            start_timeout_s=REDIS_START_TIMEOUT_S,
        )

    def start(self) -> None:
        self._process.start()
        self._process.wait_healthy()

    def stop(self) -> None:
        self._process.stop()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        self.client.close()

    def _pings(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False


def _postgres_bindir() -> Path:
    """Where the newest installed PostgreSQL keeps ``initdb`` and ``postgres`` (Debian:
    /usr/lib/postgresql/VERSION/bin, out of PATH; else PATH)."""
    found = [d for d in Path("/usr/lib/postgresql").glob("*/bin")
             if (d / "initdb").exists() and (d / "postgres").exists()]
    if found:
        return max(found, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)
    initdb = shutil.which("initdb")
    if initdb is None or not (Path(initdb).parent / "postgres").exists():
        raise ChildError("PostgreSQL's server programs are needed: apt-get install postgresql")
    return Path(initdb).parent


class PostgresServer:
    """A PostgreSQL server of its own (the installed binaries; as the ``postgres`` user
    when run as root, which PostgreSQL refuses to run as) on a free port of 127.0.0.1, its
    cluster in a new folder under /tmp; it can be crashed (``crash``: SIGQUIT, every backend
    ends at once, as in a crash) and started again on the same port (crash recovery)."""

    def __init__(self, log_dir: Path) -> None:
        bindir = _postgres_bindir()
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        as_postgres = (["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups",
                        "--"] if os.geteuid() == 0 else [])
        self.folder = Path(tempfile.mkdtemp(prefix="switchboard-pg-"))
        data = self.folder / "data"
        try:
            if as_postgres:
                shutil.chown(self.folder, "postgres", "postgres")
            subprocess.run([*as_postgres, str(bindir / "initdb"), "-D", str(data), "-U",
                            "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
                           check=True, capture_output=True, timeout=POSTGRES_START_TIMEOUT_S)
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        self._process = ChildProcess(
            "postgres",
            [*as_postgres, str(bindir / "postgres"), "-D", str(data), "-p", str(self.port),
             "-h", "127.0.0.1", "-k", str(self.folder), "-c", "fsync=off"],
            log_path=log_dir / f"postgres-{self.port}.log",
            healthy=lambda: None if self._answers() else "not accepting connections yet",
            start_timeout_s=POSTGRES_START_TIMEOUT_S,
        )

    def start(self) -> None:
        self._process.start()
        self._process.wait_healthy()

    def crash(self) -> None:
        """End the server and its backends at once (immediate shutdown: no checkpoint,
        recovery on the next start)."""
        self._process.send_signal(signal.SIGQUIT)
        with contextlib.suppress(ChildError):
            self._process.stop(grace_s=10.0)

    def stop(self) -> None:
        if self._process.poll() is None:
            self.crash()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _answers(self) -> bool:
        try:
            psycopg.connect(host="127.0.0.1", port=self.port, user="postgres",
                            dbname="postgres", connect_timeout=1).close()
            return True
        except psycopg.Error:
            return False


@dataclass
class RunningNode:
    child: ChildProcess
    sip_port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def restart(self) -> None:
        """Start the node again (same id, ports and data) after it died; wait until it
        is ready."""
        self.child.stop(grace_s=0)  # reaps what is left of the dead supervisor
        self.child.start()
        self.child.wait_healthy()


@contextmanager
def running_node(tmp_path: Path, database_url: str, *args: str,
                 **env: str) -> Iterator[RunningNode]:
    """`switchboard run ARGS` until it logs "node ready"; terminated (by PID) afterwards.
    A node on a data folder of its own (``SWITCHBOARD_DATA_DIR``) gets the bot's model
    trained in the project's ``var/`` (`make train`), not a training of its own."""
    if "SWITCHBOARD_DATA_DIR" in env:
        share_trained_model(PROJECT_ROOT / "var", Path(env["SWITCHBOARD_DATA_DIR"]))
    sip_port = free_udp_port()
    log_path = tmp_path / "node.log"
    environment = {
        **os.environ,
        "SWITCHBOARD_DATABASE_URL": database_url,
        "SWITCHBOARD_CELERY_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        "SWITCHBOARD_SIP_PORT": str(sip_port),
        "SWITCHBOARD_SIP_RTP_PORT": str(free_udp_port(200)),
        "SWITCHBOARD_SIP_RECORD": "false",
        "SWITCHBOARD_WEB_PORT": str(free_port()),
        "SWITCHBOARD_RASA_PORT": str(free_port()),
        "SWITCHBOARD_ACTION_PORT": str(free_port()),
        "SWITCHBOARD_DRAIN_TIMEOUT_S": "30",  # stopping it (SIGTERM) drains its calls
        **env,
    }
    child = ChildProcess(
        "node", [sys.executable, "-m", "switchboard", "run", *args], log_path=log_path,
        healthy=log_probe(log_path, "node ready"), base_env=environment, cwd=PROJECT_ROOT,
        start_timeout_s=NODE_START_TIMEOUT_S, stop_grace_s=NODE_STOP_GRACE_S,
    )
    with child:
        yield RunningNode(child, sip_port, log_path)


def kill_node(node: RunningNode) -> None:
    """SIGKILL the supervisor and every process under it, as a crashed machine would
    (all are stopped first, so nobody restarts anybody meanwhile)."""
    pid = node.child.pid
    if pid is None:
        raise ChildError("the node is not running: nothing to kill")
    victims = [pid, *descendants(pid)]
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, sig)


def front_process(port: int, sip_ports: list[int], data_dir: Path) -> ChildProcess:
    """``switchboard front`` on ``port`` in front of the nodes at these SIP ports of
    127.0.0.1 (its log: ``data_dir/front.log``, its files in ``data_dir/front``)."""
    log_path = data_dir / "front.log"
    return ChildProcess(
        "front", [sys.executable, "-m", "switchboard", "front", "--port", str(port),
                  "--nodes", ",".join(f"127.0.0.1:{sip_port}" for sip_port in sip_ports)],
        log_path=log_path, healthy=log_probe(log_path, "front: "), cwd=PROJECT_ROOT,
        base_env={**os.environ, "SWITCHBOARD_DATA_DIR": str(data_dir / "front")},
        start_timeout_s=FRONT_START_TIMEOUT_S)
