"""Kamailio in front of SIP workers, with SIPp peers on both sides (real SIP over UDP).

Stand-in workers are SIPp UAS instances (tests/kamailio/scenarios/*worker.xml) that log
which calls reached them; callers are SIPp UAC runs through the proxy.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from switchboard.base.settings import Settings
from switchboard.bench.local_cluster import free_udp_port
from telephony import kamailio
from telephony.kamailio import KamailioError, KamailioProxy, options_status, worker_ports
from tests.support.certs import make_certificate
from tests.telephony.kamailio.sipp import (
    CallsResult,
    SilentPort,
    SippWorker,
    WorkerLog,
    peak_calls,
    place_calls,
    require_sipp,
)

PING_INTERVAL_S = 1
FAILOVER_TIMEOUT_S = 1.0
STOP_TIMEOUT_S = 5.0
CALLERS = [f"caller{n:02d}" for n in range(12)]


@pytest.fixture(autouse=True, scope="module")
def kamailio_installed() -> None:
    if shutil.which("kamailio", path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
        pytest.fail("kamailio is needed for these tests: apt-get install kamailio "
                    "(`make test` installs it)")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", sip_host="127.0.0.1", sip_port=free_udp_port(), log_level="INFO"
    )


@pytest.fixture
def ports() -> list[int]:
    return [free_udp_port(), free_udp_port()]


def start_proxy(
    settings: Settings, ports: list[int], *, ping_interval_s: int = PING_INTERVAL_S
) -> KamailioProxy:
    proxy = KamailioProxy(
        settings,
        ports,
        ping_interval_s=ping_interval_s,
        failover_timeout_s=FAILOVER_TIMEOUT_S,
    )
    proxy.start()
    try:
        proxy.wait_healthy(timeout=10)
    except BaseException:
        proxy.stop()
        raise
    return proxy


@pytest.fixture
def proxy(settings: Settings, ports: list[int]) -> Iterator[KamailioProxy]:
    require_sipp()
    proxy = start_proxy(settings, ports)
    yield proxy
    proxy.stop()


def call(proxy: KamailioProxy, callers: list[str], work_dir: Path, **options: Any) -> CallsResult:
    return place_calls(proxy.host, proxy.port, callers, work_dir, **options)


def worker_of(logs: dict[int, WorkerLog]) -> dict[str, set[int]]:
    """Caller -> the workers (ports) whose logs show an INVITE from it."""
    landed: dict[str, set[int]] = {}
    for port, log in logs.items():
        for invite in log.invites:
            landed.setdefault(invite.caller, set()).add(port)
    return landed


def test_worker_ports_follow_the_base_port_in_steps_of_two() -> None:
    settings = Settings(sip_workers=3, sip_worker_base_port=6000)
    assert worker_ports(settings) == [6000, 6002, 6004]


def kamailio_check(config: Path) -> str:
    """``kamailio -c``'s output for a configuration it accepts (fails the test if not)."""
    check = subprocess.run(["kamailio", "-c", "-f", str(config)], capture_output=True,
                           text=True, timeout=30)
    output = check.stdout + check.stderr
    assert check.returncode == 0, output[-3000:]
    return output


def test_rendered_config_passes_kamailio_check(settings: Settings, ports: list[int]) -> None:
    settings = settings.model_copy(update={"sip_allowed_networks": "10.0.0.0/8, 192.168.0.0/16",
                                           "sip_auth_username": "trunk",
                                           "sip_auth_password": "secret"})
    config = kamailio.render_config(
        settings,
        port=settings.sip_port,
        dispatcher_list=Path("/nonexistent/dispatcher.list"),
        rpc_socket=Path("/tmp/unused.sock"),
    )
    assert f'#!substdef "!SB_SIP_PORT!{settings.sip_port}!g"' in config
    assert '#!define SB_ALLOWED_NETWORKS "10.0.0.0/8,192.168.0.0/16"' in config
    assert '"!SB_SOURCE_CALL_RATE!10!g"\n#!substdef "!SB_SOURCE_RATE_WINDOW_S!60!g"' in config
    assert "#!define SB_DIALOG_TIMEOUT_S 1860" in config  # the longest call and a minute
    path = settings.data_dir / "check.cfg"
    path.parent.mkdir(parents=True)
    path.write_text(config)
    output = kamailio_check(path)
    assert f"udp: 127.0.0.1 [127.0.0.1]:{settings.sip_port}" in output
    assert f"tcp: 127.0.0.1 [127.0.0.1]:{settings.sip_port}" in output


def test_rendered_config_with_tls_passes_kamailio_check(
    settings: Settings, tmp_path: Path
) -> None:
    certificate = make_certificate(tmp_path / "tls")
    settings = settings.model_copy(update={
        "sip_transports": "udp,tls", "sip_tls_port": free_udp_port(),
        "sip_tls_cert": certificate.cert, "sip_tls_key": certificate.key})
    def render(settings: Settings = settings, **options: Any) -> str:
        return kamailio.render_config(settings, port=settings.sip_port,
                                      dispatcher_list=Path("/nonexistent/dispatcher.list"),
                                      rpc_socket=Path("/tmp/unused.sock"), **options)

    with pytest.raises(KamailioError, match="SWITCHBOARD_SIP_TLS_CERT"):
        render()
    path = settings.data_dir / "check.cfg"
    path.parent.mkdir(parents=True)
    path.write_text(render(tls_files=(certificate.cert, certificate.key)))
    output = kamailio_check(path)
    assert f"tls: 127.0.0.1 [127.0.0.1]:{settings.sip_tls_port}" in output
    assert f"udp: 127.0.0.1 [127.0.0.1]:{settings.sip_port}" in output
    assert "tcp:" not in output
    natted = settings.model_copy(update={"sip_public_address": "203.0.113.7"})
    with pytest.raises(KamailioError, match="workers' socket"):
        render(settings=natted, tls_files=(certificate.cert, certificate.key))
    internal = free_udp_port()
    path.write_text(render(settings=natted, tls_files=(certificate.cert, certificate.key),
                           internal_port=internal))
    output = kamailio_check(path)
    assert f"[127.0.0.1]:{settings.sip_port} advertise 203.0.113.7:{settings.sip_port}" in output
    assert f"[127.0.0.1]:{settings.sip_tls_port} advertise 203.0.113.7" in output
    assert f"udp: 127.0.0.1 [127.0.0.1]:{internal}\n" in output  # the workers' side
    assert kamailio.dispatcher_list([("127.0.0.1", 5070)], f"udp:127.0.0.1:{internal}") \
        .splitlines()[1] == f"1 sip:127.0.0.1:5070 0 0 socket=udp:127.0.0.1:{internal}"
    for wrong in ("tls", "udp,sctp"):
        with pytest.raises(KamailioError, match="SWITCHBOARD_SIP_TRANSPORTS"):
            kamailio.render_config(settings.model_copy(update={"sip_transports": wrong}),
                                   port=1, dispatcher_list=path, rpc_socket=path)


def test_proxy_answers_options_and_lists_every_worker(proxy: KamailioProxy) -> None:
    assert options_status(proxy.host, proxy.port) == 200
    assert sorted(worker.port for worker in proxy.workers()) == sorted(proxy.worker_ports)
    assert proxy.poll() is None
    assert proxy.log_path.exists()


def test_a_caller_sticks_to_one_worker_and_callers_spread(
    proxy: KamailioProxy, ports: list[int], tmp_path: Path
) -> None:
    workers = [SippWorker(port, tmp_path).start() for port in ports]
    try:
        first = call(proxy, CALLERS * 2, tmp_path, name="first")
        second = call(proxy, CALLERS, tmp_path, name="second")  # another UAC port
    finally:
        logs = {worker.port: worker.stop() for worker in workers}
    assert (first.exit_code, first.successful) == (0, 24), first.describe()
    assert (second.exit_code, second.successful) == (0, 12), second.describe()
    landed = worker_of(logs)
    assert set(landed) == set(CALLERS)
    assert all(len(workers) == 1 for workers in landed.values()), landed
    assert all(logs[port].callers for port in ports), "every worker should get some callers"
    assert sum(len(log.invites) for log in logs.values()) == 36
    assert sum(len(log.byes) for log in logs.values()) == 36


@pytest.mark.parametrize("reject_code", [486, 503])
def test_a_rejecting_worker_fails_over_to_the_next(
    proxy: KamailioProxy, ports: list[int], tmp_path: Path, reject_code: int
) -> None:
    rejecting = SippWorker(
        ports[0], tmp_path, scenario="rejecting_worker.xml", reject_code=reject_code
    ).start()
    answering = SippWorker(ports[1], tmp_path).start()
    try:
        result = call(proxy, CALLERS, tmp_path)
    finally:
        rejected, answered = rejecting.stop(), answering.stop()
    assert (result.exit_code, result.successful) == (0, len(CALLERS)), result.describe()
    assert rejected.invites, "some callers should hash to the rejecting worker first"
    assert rejected.call_ids <= answered.call_ids
    assert answered.callers == set(CALLERS)
    assert len(answered.byes) == len(CALLERS)


def test_a_dead_worker_is_marked_down_by_pings_skipped_and_comes_back(
    proxy: KamailioProxy, ports: list[int], tmp_path: Path
) -> None:
    dead, alive = ports
    with SilentPort(dead) as silent, SippWorker(alive, tmp_path) as worker:
        states = {w.port: w.state for w in proxy.wait_workers(usable=1, timeout=6)}
        assert states == {dead: "inactive", alive: "active"}
        result = call(proxy, CALLERS, tmp_path, name="while-down")
        logs = {alive: worker.read_log()}
    assert (result.exit_code, result.successful) == (0, len(CALLERS)), result.describe()
    assert silent.invites == set(), "no call should be sent to the dead worker"
    assert logs[alive].callers == set(CALLERS)

    revived, other = SippWorker(dead, tmp_path).start(), SippWorker(alive, tmp_path).start()
    try:
        proxy.wait_workers(usable=2, timeout=6)
        result = call(proxy, CALLERS, tmp_path, name="after-revival")
    finally:
        back, _ = revived.stop(), other.stop()
    assert (result.exit_code, result.successful) == (0, len(CALLERS)), result.describe()
    assert back.invites, "the revived worker should take its callers again"


def test_a_silent_worker_times_out_to_the_next_and_is_marked_down(
    settings: Settings, ports: list[int], tmp_path: Path
) -> None:
    require_sipp()
    silent_port, alive = ports
    proxy = start_proxy(settings, ports, ping_interval_s=3600)  # only calls find it dead
    try:
        with SilentPort(silent_port) as silent, SippWorker(alive, tmp_path) as worker:
            result = call(proxy, CALLERS, tmp_path, concurrent=1)
            log = worker.read_log()
        states = {w.port: w.state for w in proxy.workers()}
    finally:
        proxy.stop()
    assert (result.exit_code, result.successful) == (0, len(CALLERS)), result.describe()
    assert log.callers == set(CALLERS)
    assert states[silent_port] == "inactive"
    # Only the first call for the silent worker tried it (and failed over); later ones
    # skipped it.
    assert len(silent.invites) == 1, silent.invites
    assert silent.invites <= log.call_ids


def test_no_usable_worker_gets_503(proxy: KamailioProxy, tmp_path: Path) -> None:
    proxy.wait_workers(usable=0, timeout=6)
    result = call(proxy, ["caller00"], tmp_path)
    assert result.successful == 0 and result.failed == 1, result.describe()
    assert "SIP/2.0 503 No Worker Available" in result.messages


def test_caller_hangup_reaches_the_worker_through_the_proxy(
    proxy: KamailioProxy, ports: list[int], tmp_path: Path
) -> None:
    with SippWorker(ports[0], tmp_path) as first, SippWorker(ports[1], tmp_path) as second:
        result = call(proxy, CALLERS[:4], tmp_path, hold_ms=200)
        logs = [first.read_log(), second.read_log()]
    assert (result.exit_code, result.successful) == (0, 4), result.describe()
    invites = [invite for log in logs for invite in log.invites]
    assert all(f"127.0.0.1:{proxy.port};lr" in i.record_route for i in invites), invites
    assert {i.call_id for i in invites} == set().union(*(log.byes for log in logs))


def test_worker_hangup_reaches_the_caller_through_the_proxy(
    proxy: KamailioProxy, ports: list[int], tmp_path: Path
) -> None:
    workers = [
        SippWorker(port, tmp_path, scenario="hangup_worker.xml", hold_ms=200).start()
        for port in ports
    ]
    try:
        result = call(proxy, CALLERS[:4], tmp_path, scenario="caller_hung_up.xml")
    finally:
        logs = [worker.stop() for worker in workers]
    assert (result.exit_code, result.successful) == (0, 4), result.describe()
    call_ids = {invite.call_id for log in logs for invite in log.invites}
    assert len(call_ids) == 4
    assert set().union(*(log.hung_up for log in logs)) == call_ids


def test_eight_concurrent_calls_through_the_proxy_all_complete(
    proxy: KamailioProxy, ports: list[int], tmp_path: Path
) -> None:
    hold_ms = 1500
    workers = [SippWorker(port, tmp_path).start() for port in ports]
    try:
        result = call(proxy, CALLERS[:8], tmp_path, concurrent=8, hold_ms=hold_ms)
    finally:
        logs = [worker.stop() for worker in workers]
    assert (result.exit_code, result.successful, result.failed) == (0, 8, 0), result.describe()
    assert peak_calls(result.messages) == 8, "all eight calls should be up at once"
    assert all(log.invites for log in logs), "both workers should take calls"
    assert sum(len(log.byes) for log in logs) == 8


def calls_through(settings: Settings, ports: list[int], tmp_path: Path,
                  runs: list[dict[str, Any]]) -> list[CallsResult]:
    """A proxy with ``settings`` in front of two answering SIPp workers; one SIPp caller
    run for each of ``runs`` (``call``'s arguments, ``callers`` among them), in turn."""
    require_sipp()
    proxy = start_proxy(settings, ports)  # its own health probe passes whatever the limits
    try:
        with SippWorker(ports[0], tmp_path), SippWorker(ports[1], tmp_path):
            return [call(proxy, run.pop("callers"), tmp_path, **run) for run in runs]
    finally:
        proxy.stop()


def test_callers_outside_the_allowed_networks_are_refused(
    settings: Settings, ports: list[int], tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"sip_allowed_networks": "10.0.0.0/8"})
    [result] = calls_through(settings, ports, tmp_path,
                             [{"callers": ["caller00"], "local_ip": "127.0.0.2"}])
    assert result.successful == 0, result.describe()
    assert "SIP/2.0 403 Forbidden" in result.messages


def test_a_source_over_its_call_rate_gets_503_with_retry_after(
    settings: Settings, ports: list[int], tmp_path: Path
) -> None:
    # (per hour: the fixed window's edge falls inside the test once in 3,600 runs)
    settings = settings.model_copy(update={"sip_source_call_rate": "3/hour"})
    flooder, other = calls_through(settings, ports, tmp_path, [
        {"callers": CALLERS[:6], "concurrent": 1, "local_ip": "127.0.0.2", "name": "flooder"},
        {"callers": CALLERS[6:8], "concurrent": 1, "local_ip": "127.0.0.3", "name": "other"}])
    assert (flooder.successful, flooder.failed) == (3, 3), flooder.describe()
    assert "SIP/2.0 503 Too Many Calls From Your Address" in flooder.messages
    assert "Retry-After: 3600" in flooder.messages
    assert other.successful == 2, other.describe()  # another address has its own count


def test_mandatory_srtp_refuses_an_invite_that_did_not_come_over_tls(
    settings: Settings, ports: list[int], tmp_path: Path
) -> None:
    certificate = make_certificate(tmp_path / "tls")
    settings = settings.model_copy(update={
        "sip_transports": "udp,tls", "sip_tls_port": free_udp_port(),
        "sip_tls_cert": certificate.cert, "sip_tls_key": certificate.key,
        "sip_srtp": "mandatory"})
    [result] = calls_through(settings, ports, tmp_path,
                             [{"callers": ["caller00"], "local_ip": "127.0.0.2"}])
    assert result.successful == 0, result.describe()
    assert "SIP/2.0 488 Not Acceptable Here" in result.messages
    assert "SRTP is mandatory" in result.messages


def test_stop_ends_kamailio_and_all_its_processes(settings: Settings, ports: list[int]) -> None:
    proxy = start_proxy(settings, ports)
    pid = proxy.pid
    assert pid is not None
    children = subprocess.run(
        ["pgrep", "-g", str(pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert len(children) > 1
    proxy.stop()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while subprocess.run(["pgrep", "-g", str(pid)], capture_output=True,
                         check=False).returncode != 1:
        assert time.monotonic() < deadline, "no process of Kamailio's group should remain"
        time.sleep(0.1)
    with pytest.raises(KamailioError):
        proxy.poll()


def test_port_in_use_fails_with_the_log_tail(settings: Settings, ports: list[int]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", settings.sip_port))
        proxy = KamailioProxy(settings, ports)
        with pytest.raises(KamailioError, match="exited with code") as failure:
            with proxy:
                pass
    assert str(proxy.log_path) in str(failure.value)
    assert "bind" in str(failure.value).lower()


def test_missing_kamailio_says_which_package_to_install(
    settings: Settings, ports: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kamailio.shutil, "which", lambda *_args, **_kwargs: None)
    with pytest.raises(KamailioError, match="apt-get install kamailio"):
        KamailioProxy(settings, ports).start()
