"""Kamailio as the node's one SIP entry point, in front of its SIP media workers.

Callers reach Kamailio at ``sip_host:sip_port`` (and over TLS at ``sip_tls_port``, where
TLS ends); Kamailio's dispatcher hashes each INVITE
on the From URI to one of the workers (``127.0.0.1:sip_worker_base_port + 2*i``, UDP),
fails over to the next on 408/486/500/503 or silence, pings every worker with OPTIONS and
stays in the dialog (Record-Route). The routing logic is ``deploy/kamailio/kamailio.cfg``;
this module renders it into ``data_dir/kamailio/`` and runs Kamailio as a child process.
"""

from __future__ import annotations

import grp
import json
import math
import os
import pwd
import secrets
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from switchboard.base.admission import parse_networks, parse_rate
from switchboard.base.children import ChildProcess, Managed
from switchboard.base.processes import free_port
from switchboard.base.settings import PROJECT_ROOT, Settings

CONFIG_TEMPLATE = PROJECT_ROOT / "deploy" / "kamailio" / "kamailio.cfg"
KAMAILIO_PACKAGE = "kamailio"
WORKER_HOST = "127.0.0.1"
WORKER_PORT_STEP = 2
DISPATCHER_SET = 1
PING_INTERVAL_S = 5
FAILOVER_TIMEOUT_S = 2.0
ANSWER_TIMEOUT_S = 30.0
PROXY_CHILDREN = 4
UNPRIVILEGED_USER = "nobody"
START_TIMEOUT_S = 10.0
STOP_GRACE_S = 5.0
HEALTH_POLL_S = 0.1
PROBE_TIMEOUT_S = 0.5
RPC_TIMEOUT_S = 2.0
RPC_BUFFER_BYTES = 65_536
TRANSPORTS = ("udp", "tcp", "tls")
WILDCARD_PROBES = {"0.0.0.0": "127.0.0.1", "::": "::1"}
WORKER_STATES = {"A": "active", "T": "trying", "I": "inactive", "D": "disabled"}
KAMAILIO_LOG_LEVELS = {"DEBUG": 3, "INFO": 2, "WARNING": 1, "ERROR": -1, "CRITICAL": -2}


class KamailioError(RuntimeError):
    """Kamailio is missing, cannot be configured, did not come up or does not answer."""


@dataclass(frozen=True)
class WorkerState:
    """One worker as Kamailio's dispatcher sees it."""

    uri: str
    state: str  # active, trying (one failure, still used), inactive or disabled
    probing: bool

    @property
    def port(self) -> int:
        return int(self.uri.rsplit(":", 1)[1].split(";", 1)[0])

    @property
    def target(self) -> tuple[str, int]:
        host = self.uri.split(":", 1)[1].rsplit(":", 1)[0]
        return host.strip("[]"), self.port

    @property
    def usable(self) -> bool:
        """Whether new calls may be dispatched to it."""
        return self.state in ("active", "trying")


def worker_ports(settings: Settings) -> list[int]:
    """SIP ports of the node's workers: ``sip_worker_base_port + 2*i`` for each worker."""
    return [
        settings.sip_worker_base_port + WORKER_PORT_STEP * index
        for index in range(settings.sip_workers)
    ]


def kamailio_executable() -> Path:
    """Path of the ``kamailio`` binary, or :class:`KamailioError` saying how to install it."""
    found = shutil.which("kamailio") or shutil.which("kamailio", path="/usr/sbin:/sbin")
    if not found:
        raise KamailioError(
            "kamailio is not installed: with more than one SIP worker "
            "(SWITCHBOARD_SIP_WORKERS > 1) Kamailio is the node's SIP entry point. Install "
            f"the Debian package `{KAMAILIO_PACKAGE}` (apt-get install {KAMAILIO_PACKAGE}, "
            "version 5.6 or later), or set SWITCHBOARD_SIP_WORKERS=1."
        )
    return Path(found)


def source_call_rate(settings: Settings) -> tuple[int, int] | None:
    """``sip_source_call_rate`` as Kamailio counts it: new calls per source address in
    fixed windows of a number of seconds (the workers count in a moving window)."""
    rate = parse_rate(settings.sip_source_call_rate, "SWITCHBOARD_SIP_SOURCE_CALL_RATE")
    return None if rate is None else (rate.amount, max(1, int(rate.get_expiry())))


def render_config(
    settings: Settings,
    *,
    port: int,
    dispatcher_list: Path,
    rpc_socket: Path,
    ping_interval_s: int = PING_INTERVAL_S,
    failover_timeout_s: float = FAILOVER_TIMEOUT_S,
    tls_files: tuple[Path, Path] | None = None,
    internal_port: int | None = None,
) -> str:
    """The Kamailio configuration: the template with this node's values defined in front.
    ``tls_files``: the certificate and key Kamailio reads when it serves SIP over TLS;
    ``internal_port``: behind NAT (``sip_public_address``), the UDP port of the socket
    that talks to the workers."""
    served = sip_transports(settings)
    if served == ["tls"]:
        raise KamailioError(
            f"SWITCHBOARD_SIP_TRANSPORTS={settings.sip_transports!r} names neither udp nor "
            "tcp; the Kamailio front end serves tls beside udp or tcp (the workers' health "
            "probes and the node's own checks use UDP)."
        )
    defines = [
        f'#!substdef "!SB_SIP_HOST!{_uri_host(settings.sip_host)}!g"',
        f'#!substdef "!SB_SIP_PORT!{port}!g"',
        *(f"#!define SB_WITH_{transport.upper()}" for transport in served),
        f"#!define SB_DISPATCHER_LIST {_cfg_string(str(dispatcher_list))}",
        f"#!define SB_RPC_SOCKET {_cfg_string(str(rpc_socket))}",
        f"#!define SB_PING_INTERVAL_S {max(1, int(ping_interval_s))}",
        f"#!define SB_FR_TIMER_MS {round(failover_timeout_s * 1000)}",
        f"#!define SB_FR_INV_TIMER_MS {round(ANSWER_TIMEOUT_S * 1000)}",
        f"#!define SB_CHILDREN {PROXY_CHILDREN}",
        f"#!define SB_LOG_LEVEL {_kamailio_log_level(settings.log_level)}",
    ]
    if "tls" in served:
        if tls_files is None:
            raise KamailioError(
                "SIP over TLS needs SWITCHBOARD_SIP_TLS_CERT and SWITCHBOARD_SIP_TLS_KEY (PEM "
                "files); set them or drop tls from SWITCHBOARD_SIP_TRANSPORTS")
        defines += [
            f'#!substdef "!SB_TLS_PORT!{settings.sip_tls_port}!g"',
            f"#!define SB_TLS_CERT {_cfg_string(str(tls_files[0]))}",
            f"#!define SB_TLS_KEY {_cfg_string(str(tls_files[1]))}",
        ]
    if settings.sip_public_address:
        if internal_port is None:
            raise KamailioError("behind NAT Kamailio needs a port for its workers' socket")
        defines += ["#!define SB_BEHIND_NAT",
                    f'#!substdef "!SB_PUBLIC_ADDRESS!{_uri_host(settings.sip_public_address)}!g"',
                    f'#!substdef "!SB_INTERNAL_PORT!{internal_port}!g"']
    if settings.sip_auth_username:
        defines += [f"#!define SB_AUTH_USER {_cfg_string(settings.sip_auth_username)}",
                    f"#!define SB_AUTH_PASSWORD {_cfg_string(settings.sip_auth_password)}",
                    f"#!define SB_AUTH_REALM {_cfg_string(settings.sip_auth_realm)}"]
    defines.append(f"#!define SB_FLOOD_REQUESTS {settings.sip_flood_requests}")
    defines.append(f"#!define SB_DIALOG_TIMEOUT_S {math.ceil(settings.max_call_s) + 60}")
    rate = source_call_rate(settings)
    if rate is not None:
        amount, window_s = rate
        defines += [f'#!substdef "!SB_SOURCE_CALL_RATE!{amount}!g"',
                    f'#!substdef "!SB_SOURCE_RATE_WINDOW_S!{window_s}!g"',
                    "#!define SB_CALL_RATE_TABLE "
                    f'"callrate=>size=10;autoexpire={2 * window_s};"']
    if settings.sip_srtp == "mandatory" and settings.sip_srtp_needs_tls:
        defines.append("#!define SB_SRTP_NEEDS_TLS")
    if settings.sip_source_max_calls:
        defines.append(f"#!define SB_SOURCE_MAX_CALLS {settings.sip_source_max_calls}")
    trusted = [str(n) for spec, name in (
        (settings.sip_trusted_networks, "SWITCHBOARD_SIP_TRUSTED_NETWORKS"),
        (settings.sip_allowed_networks, "SWITCHBOARD_SIP_ALLOWED_NETWORKS"),  # the trunks
    ) for n in parse_networks(spec, name)]
    if trusted:
        defines.append(f"#!define SB_TRUSTED_NETWORKS {_cfg_string(','.join(trusted))}")
    networks = [n.strip() for n in settings.sip_allowed_networks.split(",") if n.strip()]
    if networks:
        defines.append(f"#!define SB_ALLOWED_NETWORKS {_cfg_string(','.join(networks))}")
    template = CONFIG_TEMPLATE.read_text()
    header, _, body = template.partition("\n")  # keep the #!KAMAILIO marker first
    generated = "\n".join(["# --- rendered by telephony/kamailio.py ---", *defines])
    return f"{header}\n{generated}\n{body}"


def sip_transports(settings: Settings) -> list[str]:
    """The transports of ``sip_transports`` that Kamailio serves (udp, tcp, tls)."""
    named = [t.strip().lower() for t in settings.sip_transports.split(",") if t.strip()]
    served = [t for t in TRANSPORTS if t in named]
    if not served or set(named) - set(TRANSPORTS):
        raise KamailioError(
            f"SWITCHBOARD_SIP_TRANSPORTS={settings.sip_transports!r}: expected a comma list "
            "of udp, tcp, tls")
    return served


def sip_target(worker: int | str) -> tuple[str, int]:
    """``6000`` (a local worker's port) or ``"10.0.0.7:5060"`` as (host, port)."""
    if isinstance(worker, int):
        return WORKER_HOST, worker
    host, _, port = worker.strip().rpartition(":")
    if not host or not port.isdigit():
        raise KamailioError(f"Expected a SIP target as host:port, got {worker!r}.")
    return host.strip("[]"), int(port)


def dispatcher_list(targets: list[tuple[str, int]], socket: str = "") -> str:
    """The dispatcher list file: every worker (host, port) in one set, all active at
    start (reached from ``socket``, e.g. ``udp:127.0.0.1:5062``, when given)."""
    lines = ["# set destination flags priority attributes (rendered by telephony/kamailio.py)"]
    attributes = f" socket={socket}" if socket else ""
    lines += [f"{DISPATCHER_SET} sip:{_uri_host(host)}:{port} 0 0{attributes}"
              for host, port in targets]
    return "\n".join(lines) + "\n"


class KamailioProxy(Managed):
    """Kamailio as a child process listening at ``sip_host:port`` (default ``sip_port``).

    ``with KamailioProxy(settings, worker_ports(settings)) as proxy:`` starts it, waits until
    it answers OPTIONS and its dispatcher holds every worker, and stops it on exit. Only this
    object's own child (and the processes it forked) are ever signalled.
    """

    def __init__(
        self,
        settings: Settings,
        worker_ports: list[int] | list[str],
        *,
        port: int | None = None,
        ping_interval_s: int = PING_INTERVAL_S,
        failover_timeout_s: float = FAILOVER_TIMEOUT_S,
        name: str = "kamailio",
    ) -> None:
        """``worker_ports``: the node's local workers' ports, or ``host:port`` of each
        node's SIP entry when this Kamailio is the front of several nodes."""
        if not worker_ports:
            raise KamailioError("KamailioProxy needs at least one worker port.")
        self.name = "Kamailio"
        self.settings = settings
        self.targets = [sip_target(worker) for worker in worker_ports]
        self.worker_ports = [port for _host, port in self.targets]
        self.port = port or settings.sip_port
        self.ping_interval_s = ping_interval_s
        self.failover_timeout_s = failover_timeout_s
        self.config_dir = settings.data_dir / name
        self.config_path = self.config_dir / "kamailio.cfg"
        self.dispatcher_path = self.config_dir / "dispatcher.list"
        self.log_path = settings.data_dir / "logs" / f"{name}.log"
        self._child: ChildProcess | None = None
        self._run_dir: Path | None = None

    @property
    def host(self) -> str:
        """Address that reaches the proxy from this machine (loopback for a wildcard)."""
        return WILDCARD_PROBES.get(self.settings.sip_host, self.settings.sip_host)

    @property
    def uri(self) -> str:
        """SIP URI of the proxy itself, e.g. ``sip:127.0.0.1:5060``."""
        return f"sip:{_uri_host(self.host)}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child else None

    @property
    def rpc_socket(self) -> Path:
        if self._run_dir is None:
            raise KamailioError("Kamailio is not started; call start() first.")
        return self._run_dir / "rpc.sock"

    def start(self) -> None:
        """Render the configuration and start Kamailio (returns at once; see wait_healthy)."""
        if self._child is not None:
            raise KamailioError("Kamailio already started; call stop() first.")
        kamailio = kamailio_executable()
        user = _unprivileged_user()
        # Unix sockets need a short path that the unprivileged user can reach.
        self._run_dir = Path(tempfile.mkdtemp(prefix="switchboard-kamailio-"))
        self._run_dir.chmod(0o755)
        if user:
            os.chown(self._run_dir, user[0].pw_uid, user[1].gr_gid)
        self.config_dir.mkdir(parents=True, exist_ok=True)
        internal_port = None
        if self.settings.sip_public_address:  # see render_config
            internal_port = free_port(socket.SOCK_DGRAM)
        self.dispatcher_path.write_text(dispatcher_list(
            self.targets, f"udp:{_uri_host(self.settings.sip_host)}:{internal_port}"
            if internal_port else ""))
        tls_files = None
        if "tls" in sip_transports(self.settings):
            tls_files = self._tls_files(user)
        self.config_path.touch(mode=0o600)  # it may hold the trunk's password
        self.config_path.chmod(0o600)
        self.config_path.write_text(
            render_config(
                self.settings,
                port=self.port,
                dispatcher_list=self.dispatcher_path,
                rpc_socket=self.rpc_socket,
                ping_interval_s=self.ping_interval_s,
                failover_timeout_s=self.failover_timeout_s,
                tls_files=tls_files,
                internal_port=internal_port,
            )
        )
        command = [
            str(kamailio),
            "-DD",  # stay in the foreground: this object supervises it
            "-E",  # log to stderr, i.e. to data_dir/logs/kamailio.log
            "-f", str(self.config_path),
            "-Y", str(self._run_dir),
            "-P", str(self._run_dir / "kamailio.pid"),
            "-w", str(self._run_dir),
        ]  # fmt: skip
        if user:
            command += ["-u", user[0].pw_name, "-g", user[1].gr_name]
        self._child = ChildProcess(
            "Kamailio", command, log_path=self.log_path, healthy=self._problem,
            start_timeout_s=START_TIMEOUT_S, error=KamailioError,
            timeout_hint=f"Expected workers at {self.targets} behind {self.uri}.",
        )
        self._child.start()

    def _tls_files(self, user: tuple[pwd.struct_passwd, grp.struct_group] | None
                   ) -> tuple[Path, Path]:
        """The TLS certificate and key, copied into the run directory for Kamailio's
        unprivileged user (the originals may be readable by their owner only)."""
        assert self._run_dir is not None
        copies = []
        for setting, name in (("sip_tls_cert", "tls-cert.pem"), ("sip_tls_key", "tls-key.pem")):
            source = getattr(self.settings, setting)
            if source is None:
                raise KamailioError(
                    "SIP over TLS needs SWITCHBOARD_SIP_TLS_CERT and SWITCHBOARD_SIP_TLS_KEY "
                    "(PEM files); set them or drop tls from SWITCHBOARD_SIP_TRANSPORTS")
            copy = self._run_dir / name
            try:
                shutil.copyfile(source, copy)
            except OSError as exc:
                raise KamailioError(f"cannot read {setting.upper()} {source}: {exc}") from exc
            copy.chmod(0o600)
            if user:
                os.chown(copy, user[0].pw_uid, user[1].gr_gid)
            copies.append(copy)
        return copies[0], copies[1]

    def poll(self) -> int | None:
        """Kamailio's exit code once it has exited, ``None`` while it runs."""
        if self._child is None:
            raise KamailioError("Kamailio is not started; call start() first.")
        return self._child.poll()

    def wait_healthy(self, timeout: float | None = None) -> float:
        """Block until Kamailio answers OPTIONS and its dispatcher lists every worker.

        Returns the seconds waited; raises :class:`KamailioError` with the log tail when
        Kamailio exits or ``timeout`` passes. Workers need not be up yet: the dispatcher
        finds out by its own OPTIONS pings (see :meth:`wait_workers`).
        """
        if self._child is None:
            raise KamailioError("Kamailio is not started; call start() first.")
        return self._child.wait_healthy(timeout)

    def _problem(self) -> str | None:
        status = options_status(self.host, self.port, timeout=PROBE_TIMEOUT_S)
        if status is None:
            return "no answer to OPTIONS yet"
        if status != 200:
            return f"OPTIONS answered {status}"
        try:
            listed = {worker.target for worker in self.workers()}
        except KamailioError as exc:
            return str(exc)
        return None if listed == set(self.targets) else (
            f"dispatcher lists {sorted(listed)}"
        )

    def rpc(self, method: str, *params: Any) -> Any:
        """Call a Kamailio JSON-RPC command (e.g. ``dispatcher.list``); returns its result."""
        request = {"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1}
        client_path = self.rpc_socket.with_name(f"rpc-client-{os.getpid()}-{secrets.token_hex(4)}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            client.bind(str(client_path))
            try:
                client_path.chmod(0o666)  # Kamailio answers as its unprivileged user
                client.settimeout(RPC_TIMEOUT_S)
                client.sendto(json.dumps(request).encode(), str(self.rpc_socket))
                reply = json.loads(client.recv(RPC_BUFFER_BYTES))
            except (OSError, ValueError) as exc:
                raise KamailioError(
                    f"Kamailio's control socket {self.rpc_socket} did not answer {method}: {exc}"
                ) from exc
            finally:
                client_path.unlink(missing_ok=True)
        if "error" in reply:
            raise KamailioError(f"Kamailio RPC {method} failed: {reply['error']}")
        return reply.get("result")

    def drain(self) -> None:
        """Answer OPTIONS pings and new INVITEs with 503 from now on (calls up go on)."""
        self.rpc("pv.shvSet", "draining", "int", 1)

    def workers(self) -> list[WorkerState]:
        """The workers as the dispatcher sees them (``dispatcher.list``)."""
        result = self.rpc("dispatcher.list")
        states = []
        for record in (result or {}).get("RECORDS", []):
            for target in record["SET"].get("TARGETS", []):
                dest = target["DEST"]
                flags = dest.get("FLAGS", "")
                states.append(
                    WorkerState(
                        uri=dest["URI"],
                        state=WORKER_STATES.get(flags[:1], flags),
                        probing=flags[1:2] == "P",
                    )
                )
        return states

    def wait_workers(self, usable: int, timeout: float) -> list[WorkerState]:
        """Block until exactly ``usable`` workers may take calls; returns their states."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.workers()
            if sum(worker.usable for worker in states) == usable:
                return states
            if time.monotonic() > deadline:
                raise KamailioError(
                    f"Expected {usable} usable SIP workers after {timeout:.0f} s, the "
                    f"dispatcher has: {', '.join(f'{w.uri} {w.state}' for w in states)}."
                )
            time.sleep(HEALTH_POLL_S)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM Kamailio; SIGKILL its process group if it still runs after ``grace_s``."""
        child, self._child = self._child, None
        if child is not None:
            child.stop(grace_s)
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None


def options_status(host: str, port: int, *, timeout: float = PROBE_TIMEOUT_S) -> int | None:
    """Status code of the answer to one SIP OPTIONS over UDP, ``None`` if none came."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        local_port = probe.getsockname()[1]
        local = f"{_uri_host(host)}:{local_port}"
        target = f"sip:{_uri_host(host)}:{port}"
        request = (
            f"OPTIONS {target} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {local};branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:health@{local}>;tag={secrets.token_hex(4)}\r\n"
            f"To: <{target}>\r\n"
            f"Call-ID: {secrets.token_hex(8)}@switchboard\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        probe.settimeout(timeout)
        try:
            probe.sendto(request.encode(), (host, port))
            reply = probe.recv(RPC_BUFFER_BYTES)
        except OSError:
            return None
    status_line = reply.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        return None
    return int(status_line[1])


def _unprivileged_user() -> tuple[pwd.struct_passwd, grp.struct_group] | None:
    """The user and group Kamailio drops to when started as root (``None`` otherwise)."""
    if os.geteuid() != 0:
        return None
    user = pwd.getpwnam(UNPRIVILEGED_USER)
    return user, grp.getgrgid(user.pw_gid)


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _cfg_string(value: str) -> str:
    if '"' in value or "\n" in value:
        raise KamailioError(f"Cannot put {value!r} into the Kamailio configuration.")
    return f'"{value}"'


def _kamailio_log_level(level: str) -> int:
    """Kamailio's ``debug`` level for a Python logging level name."""
    return KAMAILIO_LOG_LEVELS.get(level.upper(), KAMAILIO_LOG_LEVELS["INFO"])
