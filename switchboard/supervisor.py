"""``switchboard run``: starts the node's processes, restarts the ones that die, and stops
them all on Ctrl-C / SIGTERM.

Children, in start order: the speech servers (unless remote ones are configured); the
Rasa server and action server; the analytics worker; the web app (console,
softphone, WebRTC gateway); the SIP media workers; with more than one worker, Kamailio in
front of them as the one SIP entry point.

SIGTERM (or ``switchboard drain``) drains the node for a rolling update: the SIP workers
and the web app take no new calls (INVITE, OPTIONS and softphone offers are answered 503,
so Kamailio in front sends callers to other nodes), the calls up go on until they end,
then the node stops. After ``drain_timeout_s`` the calls still up are ended (their callers
resume on a redial). Ctrl-C, or a second SIGTERM, stops at once."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Protocol

from celery import Celery

from admin.accounts import has_users
from analytics.celery_app import create_app as create_celery_app
from analytics.tasks import enqueue_call_analysis
from dialog.runtime import RasaError, RasaServers, ensure_trained
from dialog.service import publish_api_token, with_api_token
from switchboard.base.children import (
    DRAIN_SIGNAL,
    ChildError,
    ChildProcess,
    http_probe,
    log_probe,
)
from switchboard.base.metrics import process_ended
from switchboard.base.settings import Settings
from switchboard.cluster import NodeKeeper
from switchboard.node import (
    local_speech_address,
    rasa_config,
    speech_server_process,
    with_rasa,
)
from switchboard.storage.database import DatabaseError, prepare_database
from switchboard.storage.repository import CallRepository
from telephony.kamailio import KamailioError, KamailioProxy, worker_ports
from telephony.sip import RTP_PORTS_PER_WORKER
from telephony.sip_ping import options_ping

log = logging.getLogger(__name__)

POLL_S = 1.0
RESTART_WINDOW_S = 300.0
MAX_RESTARTS = 5
START_TIMEOUT_S = 180.0


class SupervisorError(RuntimeError):
    """The node cannot start or keeps failing; the message says what to do."""


class Component(Protocol):
    """What the supervisor watches: a ``ChildProcess``, or a group of them (the Rasa
    servers, Kamailio with its configuration)."""

    name: str

    def start(self) -> None: ...

    def wait_healthy(self, timeout: float | None = None) -> float: ...

    def poll(self) -> int | None: ...

    def stop(self) -> object: ...


@dataclass
class Supervised:
    component: Component
    restarts: deque[float] = field(default_factory=deque)
    worker: str | None = None  # calls to end when it dies
    drain: Callable[[], None] | None = None  # asks it to take no new calls
    drained: bool = False  # it carried calls, drained them and exited


def pid_file(settings: Settings) -> Path:
    """Where a running node keeps its supervisor's PID (for ``switchboard drain``)."""
    return settings.data_dir / "run" / "node.pid"


def python_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "switchboard", *args]


def web_app(settings: Settings, rasa_url: str) -> ChildProcess:
    scheme = "https" if settings.web_tls_cert else "http"
    return ChildProcess(
        "web app", python_command("web"),
        log_path=settings.data_dir / "logs" / "web.log",
        healthy=http_probe(f"{scheme}://{settings.web_host}:{settings.web_port}/healthz"),
        env={
            "SWITCHBOARD_RASA_URL": rasa_url,
            "SWITCHBOARD_RASA_API_TOKEN": settings.rasa_api_token,
            "SWITCHBOARD_SPEECH_SERVERS": settings.speech_servers,
            "SWITCHBOARD_WORKER_NAME": "web",
        },
    )


def analytics_worker(settings: Settings) -> ChildProcess:
    log_path = settings.data_dir / "logs" / "analytics.log"
    return ChildProcess(
        "analytics worker", python_command("analytics", "worker"),
        log_path=log_path, healthy=log_probe(log_path, " ready."),
        env={"SWITCHBOARD_WORKER_NAME": "analytics"},
    )


def sip_worker(
    settings: Settings, index: int, port: int, rasa_url: str, *, behind_proxy: bool
) -> ChildProcess:
    name = f"sip-{index}"
    env = {
        "SWITCHBOARD_RASA_URL": rasa_url,
        "SWITCHBOARD_RASA_API_TOKEN": settings.rasa_api_token,
        "SWITCHBOARD_SPEECH_SERVERS": settings.speech_servers,
        "SWITCHBOARD_WORKER_NAME": name,
        "SWITCHBOARD_SIP_PORT": str(port),
        "SWITCHBOARD_SIP_RTP_PORT": str(settings.sip_rtp_port + index * RTP_PORTS_PER_WORKER),
        "SWITCHBOARD_SIP_WORKERS": "1",
    }
    if behind_proxy:  # Kamailio filters callers; workers only ever see the proxy
        env["SWITCHBOARD_SIP_ALLOWED_NETWORKS"] = ""
        env["SWITCHBOARD_SIP_TRANSPORTS"] = "udp"
        env["SWITCHBOARD_SIP_SRTP_NEEDS_TLS"] = "false"  # Kamailio ended TLS on this host
        env["SWITCHBOARD_SIP_SOURCE_MAX_CALLS"] = "0"  # and limits each source itself
        env["SWITCHBOARD_SIP_SOURCE_CALL_RATE"] = ""
        env["SWITCHBOARD_SIP_AUTH_USERNAME"] = ""  # Kamailio authenticates callers
        # Behind NAT Kamailio advertises the public address; the workers' media is reached
        # there directly, their signalling only through Kamailio.
        env["SWITCHBOARD_SIP_PUBLIC_ADDRESS"] = ""
        env["SWITCHBOARD_SIP_MEDIA_ADDRESS"] = (settings.sip_media_address
                                                or settings.sip_public_address)

    def answers_options() -> str | None:
        if options_ping(settings.sip_host, port):
            return None
        return f"no answer to OPTIONS at {settings.sip_host}:{port}"

    return ChildProcess(
        f"SIP worker {index}", python_command("sip-worker"),
        log_path=settings.data_dir / "logs" / f"{name}.log", healthy=answers_options, env=env,
    )


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stop = threading.Event()
        self._drain_asked = threading.Event()
        self._drain_deadline: float | None = None
        self._children: list[Supervised] = []
        self._calls: CallRepository | None = None
        self._keeper: NodeKeeper | None = None
        self._celery: Celery | None = None

    def run(self) -> None:
        """Start everything, supervise until a stop signal, then stop everything."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)
        pid_path = pid_file(self.settings)
        pid_path.parent.mkdir(parents=True, exist_ok=True)
        pid_path.write_text(f"{os.getpid()}\n")
        try:
            self._supervise()
        finally:
            pid_path.unlink(missing_ok=True)

    def _supervise(self) -> None:
        try:
            sessions = prepare_database(
                self.settings.effective_database_url, demo_data=self.settings.demo_data
            )
        except DatabaseError as exc:
            raise SupervisorError(str(exc)) from exc
        self._calls = CallRepository(sessions)
        if self.settings.redis_url:
            self._keeper = NodeKeeper(self.settings, self._calls, self._analyse,
                                      info={"sip": f"{self.settings.sip_host}:"
                                                   f"{self.settings.sip_port}",
                                            "web": self.settings.effective_web_url})
            self._keeper.start()
        ended = self._calls.end_active_calls(reason="node_restarted", node=self._node_id)
        if ended:
            log.warning("marked %d calls left active by a previous run as ended", len(ended))
            for call_id in ended:
                self._analyse(call_id)
        try:
            self._start_all()
            log.info("node ready: %s", self._summary())
            if not has_users(sessions):
                log.warning("the console has no users yet: create the first admin with "
                            "`.venv/bin/switchboard users create NAME --role admin`")
            while not self._stop.wait(POLL_S):
                if self._drain_asked.is_set() and self._drain_deadline is None:
                    self._begin_drain()
                for child in self._children:
                    code = None if child.drained else child.component.poll()
                    if code is None:
                        continue
                    if self._drain_deadline is not None and child.worker is not None:
                        child.drained = True
                        log.info("%s drained and exited (code %s)", child.component.name, code)
                    else:
                        self._restart(child, code)
                if self._drain_deadline is not None and self._drained():
                    break
        finally:
            log.info("stopping the node's processes")
            for child in reversed(self._children):
                child.component.stop()
            if self._keeper is not None:
                self._keeper.stop()
            log.info("stopped")

    def _begin_drain(self) -> None:
        """Ask every child that carries calls, and Kamailio, to take no new calls."""
        self._drain_deadline = time.monotonic() + self.settings.drain_timeout_s
        log.info("draining: no new calls; the calls up may take up to %.0f s",
                 self.settings.drain_timeout_s)
        if self._keeper is not None:
            self._keeper.info["draining"] = True
        for child in self._children:
            if child.drain is not None:
                try:
                    child.drain()
                except Exception as exc:  # a child that cannot drain is stopped at the end
                    log.warning("%s cannot drain: %s", child.component.name, exc)

    def _drained(self) -> bool:
        """Whether the drain is over: every call carrier exited, or the time is up."""
        assert self._drain_deadline is not None
        if all(child.drained for child in self._children if child.worker is not None):
            log.info("drained: no call left on this node")
            return True
        if time.monotonic() > self._drain_deadline:
            log.warning("drain timeout (%.0f s): ending the calls still up",
                        self.settings.drain_timeout_s)
            return True
        return False

    @property
    def _node_id(self) -> str:
        return self.settings.effective_node_id

    def _analyse(self, call_id: str) -> None:
        if self._celery is None:
            self._celery = create_celery_app(self.settings)
        enqueue_call_analysis(call_id, celery=self._celery)

    def _start_all(self) -> None:
        if not self.settings.speech_servers:
            addresses = []
            for index in range(self.settings.speech_server_count):
                name = f"speech-{index}"
                address = local_speech_address(self.settings, name)
                self._launch(Supervised(speech_server_process(self.settings, address, name)))
                addresses.append(str(address))
            self.settings = self.settings.model_copy(
                update={"speech_servers": ",".join(addresses)})
        settings = self.settings
        rasa_url = self._start_dialog() if settings.rasa_managed else settings.rasa_url
        settings = self.settings
        self._launch(Supervised(analytics_worker(settings)))
        web = web_app(settings, rasa_url)
        self._launch(Supervised(web, worker="web", drain=self._drain_signal(web)))
        proxied = settings.sip_workers > 1
        ports = worker_ports(settings) if proxied else [settings.sip_port]
        for index, port in enumerate(ports):
            worker = sip_worker(settings, index, port, rasa_url, behind_proxy=proxied)
            self._launch(Supervised(worker, worker=f"sip-{index}",
                                    drain=self._drain_signal(worker)))
        if proxied:
            proxy = KamailioProxy(settings, ports)
            self._launch(Supervised(proxy, drain=proxy.drain))

    @staticmethod
    def _drain_signal(child: ChildProcess) -> Callable[[], None]:
        return lambda: child.send_signal(DRAIN_SIGNAL)

    def _start_dialog(self) -> str:
        """Start the node's own Rasa server and action server; their URL."""
        dialog = with_api_token(rasa_config(self.settings))
        self.settings = with_rasa(self.settings, dialog)
        publish_api_token(dialog)
        try:
            rasa = RasaServers(dialog, ensure_trained(dialog))
        except RasaError as exc:
            raise SupervisorError(str(exc)) from exc
        self._launch(Supervised(rasa))
        return rasa.url

    def _launch(self, child: Supervised) -> None:
        self._children.append(child)
        self._start(child.component)

    def _start(self, component: Component) -> None:
        component.start()
        try:
            waited = component.wait_healthy(START_TIMEOUT_S)
        except (ChildError, RasaError, KamailioError) as exc:
            component.stop()
            raise SupervisorError(str(exc)) from exc
        except BaseException:
            component.stop()
            raise
        log.info("%s healthy after %.1f s", component.name, waited)

    def _restart(self, child: Supervised, code: int) -> None:
        name = child.component.name
        now = time.monotonic()
        child.restarts.append(now)
        while child.restarts and now - child.restarts[0] > RESTART_WINDOW_S:
            child.restarts.popleft()
        pid = getattr(child.component, "pid", None)
        if isinstance(pid, int):
            process_ended(pid)
        if child.worker is not None and self._calls is not None:
            lost = self._calls.end_active_calls(reason="worker_died", worker=child.worker,
                                                node=self._node_id)
            if lost:
                log.error("%s held %d calls; marked ended (worker_died)", name, len(lost))
                if self._keeper is not None:
                    self._keeper.end_calls(lost, "worker_died")
                for call_id in lost:
                    self._analyse(call_id)
        if len(child.restarts) > MAX_RESTARTS:
            raise SupervisorError(
                f"{name} died {len(child.restarts)} times in {RESTART_WINDOW_S:.0f} s; "
                f"giving up. See the logs in {self.settings.data_dir / 'logs'}."
            )
        log.error("%s died (exit code %s); restarting it", name, code)
        child.component.stop()
        try:
            self._start(child.component)
        except SupervisorError as exc:
            # Left stopped, it would never be polled as dead again: a failed restart
            # counts as another death (until MAX_RESTARTS gives up with an error).
            log.error("restart of %s failed: %s", name, exc)
            self._restart(child, code)

    def _summary(self) -> str:
        s = self.settings
        scheme = "https" if s.web_tls_cert else "http"
        web = f"{scheme}://{s.web_host}:{s.web_port}"
        return (f"SIP on {s.sip_host}:{s.sip_port} ({s.sip_workers} worker(s)), "
                f"speech at {s.speech_servers}, "
                f"console at {web}/, softphone at {web}/softphone")

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        if signum == signal.SIGTERM and not self._drain_asked.is_set():
            self._drain_asked.set()  # the loop drains; a second SIGTERM stops at once
        else:
            self._stop.set()
