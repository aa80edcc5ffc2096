"""Digest authentication both ways, with real peers. Inbound: a worker whose trunk must
authenticate challenges an INVITE (401), answers baresip once it proves the password and
refuses a wrong one (403). Outbound: a worker registers with digest at a Kamailio registrar
(a PBX), renews the registration before it expires, receives the PBX's calls through it,
unregisters when it stops; with a wrong password it says so and keeps trying."""

from __future__ import annotations

import grp
import os
import pwd
import re
import socket
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from switchboard.base.children import ChildProcess
from switchboard.base.processes import free_port
from switchboard.bench.local_cluster import free_udp_port, running_node
from switchboard.storage.repository import CallRepository
from telephony.kamailio import kamailio_executable
from tests.analytics.test_worker import wait_for
from tests.support.audio_tools import write_wav
from tests.support.dialog_fixtures import shared_dialog
from tests.telephony.sip.peers import Baresip, invite, options, run_sipp, sip_request, ulaw_wav
from tests.telephony.sip.scenarios import write_scenario
from tests.telephony.sip.test_sip_calls import RATE, audio, stored_call
from tests.telephony.sip.workers import Worker, worker_process

pytestmark = pytest.mark.integration

TRUNK_USER = "trunk"
TRUNK_PASSWORD = "trunk-secret"  # (baresip reads an account parameter up to a space)
REGISTRAR_PASSWORD = "line-secret"
REGISTRAR_CONFIG = Path(__file__).with_name("registrar.cfg")
OUTSIDER = "127.0.0.3"
"""A caller's address that is not the node's own (Kamailio trusts itself)."""


# ---------------------------------------------------------------------- inbound


@pytest.fixture(scope="module")
def guarded_worker(rasa_server: object, database_url: str,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """A worker every caller must authenticate to (no allowed networks)."""
    with worker_process(
        tmp_path_factory.mktemp("guarded"), rasa_server.url,  # type: ignore[attr-defined]
        database_url, SWITCHBOARD_SIP_AUTH_USERNAME=TRUNK_USER,
        SWITCHBOARD_SIP_AUTH_PASSWORD=TRUNK_PASSWORD,
    ) as worker:
        yield worker


def test_an_invite_without_credentials_is_challenged(guarded_worker: Worker) -> None:
    port = guarded_worker.port
    reply = sip_request(port, invite(port, "0", "a=rtpmap:0 PCMU/8000\r\n"))
    assert reply is not None and reply.startswith("SIP/2.0 401"), reply
    assert options(port) == "SIP/2.0 200 OK"  # health probes need no credentials


def call_as(worker: Worker, workdir: Path, password: str, user: str = TRUNK_USER,
            address: str = "127.0.0.1") -> Baresip:
    """baresip calling ``worker`` as ``user`` from ``address``, authenticating as the
    trunk."""
    workdir.mkdir(parents=True, exist_ok=True)
    wav = workdir / "caller.wav"
    write_wav(wav, audio([5000]), RATE)
    phone = Baresip(workdir, wav, sip_port=free_udp_port(3), ctrl_port=free_port(),
                    user=user, auth_user=TRUNK_USER, auth_pass=password, address=address)
    phone.start()
    phone.command("dial", f"sip:bot@127.0.0.1:{worker.port}")
    return phone


def test_a_trunk_that_proves_the_password_is_answered(
    guarded_worker: Worker, calls: CallRepository, tmp_path: Path
) -> None:
    phone = call_as(guarded_worker, tmp_path, TRUNK_PASSWORD)
    try:
        assert phone.wait_for_log("Call established", 15), phone.log()
        assert phone.wait_for_log("terminated", 30), phone.log()
    finally:
        phone.stop()
    [call] = stored_call(calls, f"{TRUNK_USER}@127.0.0.1")
    assert call.turns and call.turns[0].speaker == "bot"
    assert "challenging a call" in guarded_worker.log()


def test_a_wrong_password_is_refused(guarded_worker: Worker, tmp_path: Path) -> None:
    phone = call_as(guarded_worker, tmp_path, "guessed")
    try:
        assert phone.wait_for_log("403", 15), phone.log()
        assert "Call established" not in phone.log()
    finally:
        phone.stop()
    assert "wrong password" in guarded_worker.log()
    assert guarded_worker.child.poll() is None


# ---------------------------------------------------------------------- registration


class Registrar:
    """A Kamailio registrar on a free port (its log tells what it saw)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_udp_port()
        self.aor = f"sip:switchboard@127.0.0.1:{self.port}"
        self.log_path = workdir / "registrar.log"
        config = workdir / "registrar.cfg"
        header, _, body = REGISTRAR_CONFIG.read_text().partition("\n")
        config.write_text("\n".join([
            header, f'#!substdef "!REG_PORT!{self.port}!g"',
            f'#!define REG_PASSWORD "{REGISTRAR_PASSWORD}"', f'#!define REG_AOR "{self.aor}"',
            body]))
        run_dir = workdir / "run"
        run_dir.mkdir()
        command = [str(kamailio_executable()), "-DD", "-E", "-f", str(config), "-Y",
                   str(run_dir), "-P", str(run_dir / "pid"), "-w", str(run_dir)]
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(run_dir, nobody.pw_uid, nobody.pw_gid)
            command += ["-u", "nobody", "-g", grp.getgrgid(nobody.pw_gid).gr_name]
        self.child = ChildProcess(
            "registrar", command, log_path=self.log_path, start_timeout_s=10.0,
            healthy=lambda: None if options(self.port, 0.5) else "no OPTIONS answer yet")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def saved(self) -> list[str]:
        """The Expires of each REGISTER it saved, in order."""
        return re.findall(r"REGISTER from \S+ saved: contact .* expires (\S+)", self.log())


@pytest.fixture
def registrar(tmp_path: Path) -> Iterator[Registrar]:
    found = Registrar(tmp_path)
    with found.child:
        yield found


def registering_worker(tmp_path: Path, rasa_url: str, database_url: str, registrar: Registrar,
                       password: str) -> AbstractContextManager[Worker]:
    return worker_process(
        tmp_path / "worker", rasa_url, database_url,
        SWITCHBOARD_SIP_REGISTRAR=f"sip:127.0.0.1:{registrar.port}",
        SWITCHBOARD_SIP_USERNAME="switchboard", SWITCHBOARD_SIP_PASSWORD=password,
        SWITCHBOARD_SIP_REGISTER_EXPIRY_S="10", SWITCHBOARD_SIP_REGISTER_RETRY_S="2",
    )


def test_the_worker_registers_renews_takes_calls_and_unregisters(
    registrar: Registrar, rasa_server: object, database_url: str, calls: CallRepository,
    tmp_path: Path,
) -> None:
    rasa_url = rasa_server.url  # type: ignore[attr-defined]
    with registering_worker(tmp_path, rasa_url, database_url, registrar,
                            REGISTRAR_PASSWORD) as worker:
        wait_for(lambda: "registered with" in worker.log(), 15, "the registration")
        assert "challenged" in registrar.log()  # it answered the digest challenge
        wait_for(lambda: len(registrar.saved()) >= 2, 20, "a renewal before expiry")
        # The PBX's caller reaches the bot through the registrar.
        wav = ulaw_wav(tmp_path / "quiet.wav", audio([4000]))
        scenario = write_scenario(tmp_path / "pbx.xml", "caller_hangs_up", wav=wav,
                                  hold_ms=3000)
        local_port = free_udp_port()
        result = run_sipp(scenario, registrar.port, tmp_path, local_port=local_port)
        assert result.returncode == 0, (tmp_path / "pbx-errors.log").read_text()
        [call] = stored_call(calls, f"sipp{local_port}@")
        assert call.turns and call.turns[0].speaker == "bot"
    wait_for(lambda: registrar.saved()[-1] == "0" or "expires 0" in registrar.log(), 10,
             "the unregistration")
    late = sip_request(registrar.port, invite(registrar.port, "0", "a=rtpmap:0 PCMU/8000\r\n"))
    assert late is not None and late.startswith("SIP/2.0 404"), late


def test_a_refused_registration_is_reported_and_retried(
    registrar: Registrar, rasa_server: object, database_url: str, tmp_path: Path,
) -> None:
    with registering_worker(tmp_path, rasa_server.url,  # type: ignore[attr-defined]
                            database_url, registrar, "wrong") as worker:
        wait_for(lambda: worker.log().count("registration with") >= 2, 20,
                 "two failed attempts")
        assert re.search(r"registration with \S+ failed: 401", worker.log()), worker.log()[-2000:]
        assert registrar.saved() == []
        assert options(worker.port) == "SIP/2.0 200 OK"  # still up, still answering


def test_kamailio_in_front_authenticates_the_trunk(
    database_url: str, rasa_server: object, calls: CallRepository, tmp_path: Path
) -> None:
    """With several workers Kamailio asks for the credentials (407) instead of the
    workers; the right password gets a call, a wrong one none."""
    with running_node(tmp_path / "node", database_url, "--sip-workers", "2",
                      **shared_dialog(rasa_server),
                      SWITCHBOARD_SIP_WORKER_BASE_PORT=str(free_udp_port(4)),
                      SWITCHBOARD_SIP_AUTH_USERNAME=TRUNK_USER,
                      SWITCHBOARD_SIP_AUTH_PASSWORD=TRUNK_PASSWORD) as node:
        front = Worker(node.child, node.sip_port, 0, tmp_path, node.log_path)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as outsider:  # not the node
            outsider.bind((OUTSIDER, 0))
            outsider.settimeout(5)
            outsider.sendto(invite(node.sip_port, "0", "a=rtpmap:0 PCMU/8000\r\n"),
                            ("127.0.0.1", node.sip_port))
            reply = outsider.recv(65535).decode(errors="replace")
        assert reply.startswith("SIP/2.0 407"), reply
        phone = call_as(front, tmp_path / "right", TRUNK_PASSWORD, user="fronted",
                        address=OUTSIDER)
        try:
            assert phone.wait_for_log("Call established", 15), phone.log()
            assert phone.wait_for_log("terminated", 30), phone.log()
        finally:
            phone.stop()
        wrong = call_as(front, tmp_path / "wrong", "guessed-password", user="fronted",
                        address=OUTSIDER)
        try:
            assert wrong.wait_for_log("session closed", 15), wrong.log()
            assert "Call established" not in wrong.log()
        finally:
            wrong.stop()
    [call] = stored_call(calls, f"fronted@{OUTSIDER}", count=1)
    assert call.worker in ("sip-0", "sip-1") and call.turns[0].speaker == "bot"
