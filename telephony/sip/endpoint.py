"""The one thread that owns PJSIP: it creates the endpoint, polls SIP events, runs the
commands the asyncio side posts (answer, hang up, transfer, dial), watches RTP, and
tears everything down in the order PJSUA2 needs (calls, ports, account, library)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pjsua2 as pj

from switchboard.base.admission import SourceAdmission, in_networks, parse_networks
from switchboard.base.settings import Settings
from telephony.sip import RTP_PORTS_PER_WORKER
from telephony.sip.availability import SERVICE_UNAVAILABLE, ServiceAvailability
from telephony.sip.call import (
    CallEvents,
    CallLeg,
    SipCall,
    sip_headers,
    supports_replaces,
    via_transport,
)
from telephony.sip.digest import DigestAuthenticator, DigestCheck
from telephony.sip.media_port import SipAudioSink, SipAudioSource

CALL_UUID_HEADER = "X-Call-UUID"

log = logging.getLogger(__name__)
T = TypeVar("T")

POLL_MS = 10
"""How long one ``libHandleEvents`` waits for SIP traffic before commands run again."""
RTP_CHECK_S = 1.0
"""How often the RTP inactivity watchdog looks at the calls' packet counters."""
SHUTDOWN_HANGUP_S = 3.0
"""How long shutdown waits for hung-up calls to be disconnected."""
SRTP_MODES = {
    "off": pj.PJMEDIA_SRTP_DISABLED,
    "optional": pj.PJMEDIA_SRTP_OPTIONAL,
    "mandatory": pj.PJMEDIA_SRTP_MANDATORY,
}
"""``sip_srtp`` and PJMEDIA's SRTP use (SDES keying, PJSUA's default)."""
CODEC_IDS = {"PCMU": "PCMU/8000", "PCMA": "PCMA/8000", "G722": "G722/16000"}
"""Codec names of ``sip_codecs`` and the PJSIP codec id prefixes they select."""


class SipSetupError(RuntimeError):
    """The endpoint could not start; the message says what to change."""


@dataclass
class _Command:
    fn: Callable[[], Any]
    future: concurrent.futures.Future[Any]


class _PjLog(pj.LogWriter):
    def write(self, entry: pj.LogEntry) -> None:
        level = logging.WARNING if entry.level <= 2 else logging.DEBUG
        log.log(level, "pjsip: %s", str(entry.msg).rstrip())


class _Account(pj.Account):
    def __init__(self, endpoint: SipEndpoint) -> None:
        super().__init__()
        self.endpoint = endpoint

    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:
        try:
            self.endpoint.on_incoming(self, prm)
        except Exception:
            log.exception("incoming call handling failed")

    def onRegState(self, prm: pj.OnRegStateParam) -> None:
        try:
            code, reason, expires = int(prm.code), str(prm.reason), int(prm.expiration)
            if 200 <= code < 300 and expires > 0:
                log.info("registered with %s: %s %s (for %d s)",
                         self.endpoint.settings.sip_registrar, code, reason, expires)
            elif 200 <= code < 300:
                log.info("unregistered from %s", self.endpoint.settings.sip_registrar)
            else:  # PJSUA itself retries only some failures (not a refused password)
                retry_s = self.endpoint.settings.sip_register_retry_s
                log.warning("registration with %s failed: %s %s; trying again in %d s",
                            self.endpoint.settings.sip_registrar, code, reason, retry_s)
                self.endpoint.register_at = time.monotonic() + retry_s
        except Exception:
            log.exception("registration callback failed")


class SipEndpoint:
    """PJSUA2 driven from one dedicated thread; ``submit`` runs a function on it."""

    def __init__(self, settings: Settings, events: CallEvents,
                 new_media: Callable[[], tuple[SipAudioSource, SipAudioSink]], *,
                 sample_rate: int) -> None:
        self.settings = settings
        self.events = events
        self.sample_rate = sample_rate
        self._new_media = new_media
        self._networks = parse_networks(settings.sip_allowed_networks,
                                        "SWITCHBOARD_SIP_ALLOWED_NETWORKS")
        self._admission = SourceAdmission(
            rate=settings.sip_source_call_rate, concurrent=settings.sip_source_max_calls,
            trusted=[*parse_networks(settings.sip_trusted_networks,
                                     "SWITCHBOARD_SIP_TRUSTED_NETWORKS"), *self._networks],
            rate_setting="SWITCHBOARD_SIP_SOURCE_CALL_RATE")  # (allowed networks: trunks)
        self._digest = (DigestAuthenticator(settings.sip_auth_realm, settings.sip_auth_username,
                                            settings.sip_auth_password)
                        if settings.sip_auth_username else None)
        self.register_at: float | None = None
        """When to register again after a failure (monotonic), set by the account."""
        self._admitted: dict[int, str] = {}
        """Keys of the calls holding a per-source slot, and their source addresses."""
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._calls: dict[int, SipCall] = {}
        # Calls answered 403/486/503, held until DISCONNECTED: PJSUA sends a final answer given
        # in onIncomingCall after the callback, and a call object dropped before that hangs
        # up with 603 Decline instead.
        self._rejected: dict[int, SipCall] = {}
        # Calls replaced by a new dialog (RFC 3891), held until their own DISCONNECTED: the
        # PJSUA2 object must outlive its PJSUA call.
        self._replaced_calls: list[SipCall] = []
        self._keys = itertools.count(1)
        self._stop = threading.Event()
        self._ready: concurrent.futures.Future[list[str]] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, name="pjsip", daemon=True)
        self.listening: list[str] = []
        self.availability = ServiceAvailability()

    # ------------------------------------------------------------------ any thread

    @property
    def draining(self) -> bool:
        """Whether new calls are refused (503) and OPTIONS answered 503."""
        return self.availability.draining

    def drain(self) -> None:
        """Take no new calls from now on; the calls up go on."""
        self.availability.draining = True

    def start(self) -> concurrent.futures.Future[list[str]]:
        """Start the thread; the future resolves to the addresses listened on."""
        self._thread.start()
        return self._ready

    def submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        if self._stop.is_set() or not self._thread.is_alive():
            future.set_exception(RuntimeError("the SIP endpoint is not running"))
        else:
            self._commands.put(_Command(fn, future))
        return future

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def active_calls(self) -> int:
        return len(self._calls)

    # ------------------------------------------------------------------ PJSIP thread

    def _run(self) -> None:
        self.ep = pj.Endpoint()
        try:
            self.ep.libCreate()
            self._init()
        except Exception as exc:
            log.error("SIP endpoint failed to start: %s", exc)
            self._ready.set_exception(_setup_error(exc))
            self._destroy()
            return
        self._ready.set_result(self.listening)
        next_check = time.monotonic() + RTP_CHECK_S
        while not self._stop.is_set():
            try:
                self.ep.libHandleEvents(POLL_MS)
            except pj.Error as exc:
                log.warning("pjsip event handling: %s", exc.info())
            self._run_commands()
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + RTP_CHECK_S
                self._check_rtp()
                self._register_again()
        self._shutdown()

    def _init(self) -> None:
        settings = self.settings
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = False
        cfg.uaConfig.maxCalls = settings.sip_max_calls
        cfg.uaConfig.userAgent = "Switchboard"
        self._log_writer = _PjLog()
        cfg.logConfig.writer = self._log_writer
        cfg.logConfig.level = 4 if log.isEnabledFor(logging.DEBUG) else 2
        cfg.logConfig.consoleLevel = cfg.logConfig.level
        cfg.logConfig.decor = 0
        cfg.medConfig.clockRate = self.sample_rate
        cfg.medConfig.sndClockRate = self.sample_rate
        cfg.medConfig.channelCount = 1
        cfg.medConfig.audioFramePtime = 20
        cfg.medConfig.ptime = 20
        cfg.medConfig.noVad = True
        cfg.medConfig.ecTailLen = 0
        if self.settings.sip_jitter_buffer_ms >= 0:  # else PJMEDIA's adaptive defaults
            cfg.medConfig.jbInit = self.settings.sip_jitter_buffer_ms
            cfg.medConfig.jbMinPre = self.settings.sip_jitter_buffer_ms
        self.ep.libInit(cfg)
        self._transports()
        self.ep.audDevManager().setNullDev()
        self._codecs()
        self.ep.libStart()
        self.availability.register()
        self.account = _Account(self)
        self.account.create(self._account_config(), True)

    def _transports(self) -> None:
        settings = self.settings
        kinds = {k.strip().lower() for k in settings.sip_transports.split(",") if k.strip()}
        unknown = kinds - {"udp", "tcp", "tls"}
        if unknown or not kinds:
            raise SipSetupError(
                f"SWITCHBOARD_SIP_TRANSPORTS={settings.sip_transports!r}: expected a comma "
                "list of udp, tcp, tls"
            )
        for kind, pj_type, port in (("udp", pj.PJSIP_TRANSPORT_UDP, settings.sip_port),
                                    ("tcp", pj.PJSIP_TRANSPORT_TCP, settings.sip_port),
                                    ("tls", pj.PJSIP_TRANSPORT_TLS, settings.sip_tls_port)):
            if kind not in kinds:
                continue
            tcfg = pj.TransportConfig()
            tcfg.port = port
            tcfg.boundAddress = settings.sip_host
            tcfg.publicAddress = settings.sip_public_address
            if kind == "tls":
                if not (settings.sip_tls_cert and settings.sip_tls_key):
                    raise SipSetupError(
                        "SIP over TLS needs SWITCHBOARD_SIP_TLS_CERT and SWITCHBOARD_SIP_TLS_KEY "
                        "(PEM files); set them or drop tls from SWITCHBOARD_SIP_TRANSPORTS"
                    )
                tcfg.tlsConfig.certFile = str(settings.sip_tls_cert)
                tcfg.tlsConfig.privKeyFile = str(settings.sip_tls_key)
            tid = self.ep.transportCreate(pj_type, tcfg)
            info = self.ep.transportGetInfo(tid)
            self.listening.append(f"{kind}:{info.localName}")
            if port == 0 and kind == "udp":
                self.settings = settings = settings.model_copy(
                    update={"sip_port": int(str(info.localName).rsplit(":", 1)[1])})

    def _codecs(self) -> None:
        wanted = [c.strip().upper() for c in self.settings.sip_codecs.split(",") if c.strip()]
        unknown = [c for c in wanted if c not in CODEC_IDS]
        if unknown or not wanted:
            raise SipSetupError(
                f"SWITCHBOARD_SIP_CODECS={self.settings.sip_codecs!r}: expected a comma list "
                f"of {', '.join(CODEC_IDS)}"
            )
        prefixes = [CODEC_IDS[c] for c in wanted]
        for codec in self.ep.codecEnum2():
            codec_id = str(codec.codecId)
            rank = next((i for i, p in enumerate(prefixes) if codec_id.startswith(p + "/")), None)
            self.ep.codecSetPriority(codec_id, 0 if rank is None else 255 - rank)

    def _account_config(self) -> pj.AccountConfig:
        settings = self.settings
        acfg = pj.AccountConfig()
        user = settings.sip_username or "switchboard"
        acfg.idUri = f"sip:{user}@{settings.sip_public_address or settings.sip_host}:" \
                     f"{settings.sip_port}"
        if settings.sip_registrar:
            acfg.idUri = registered_uri(user, settings.sip_registrar)
            acfg.regConfig.registrarUri = settings.sip_registrar
            acfg.regConfig.timeoutSec = settings.sip_register_expiry_s
            acfg.regConfig.retryIntervalSec = settings.sip_register_retry_s
            acfg.regConfig.firstRetryIntervalSec = settings.sip_register_retry_s
        if settings.sip_username:
            acfg.sipConfig.authCreds.append(pj.AuthCredInfo(
                "digest", settings.sip_realm, settings.sip_username, 0, settings.sip_password))
        acfg.mediaConfig.srtpUse = SRTP_MODES[settings.sip_srtp]
        # Optional SRTP is best effort: keys over plain SIP expose no more than plain RTP
        # would, and PJSUA would otherwise refuse to place calls over UDP or TCP.
        acfg.mediaConfig.srtpSecureSignaling = (
            1 if settings.sip_srtp == "mandatory" and settings.sip_srtp_needs_tls else 0)
        tcfg = acfg.mediaConfig.transportConfig
        tcfg.port = settings.sip_rtp_port
        tcfg.portRange = RTP_PORTS_PER_WORKER
        tcfg.boundAddress = settings.sip_host
        tcfg.publicAddress = settings.sip_media_address or settings.sip_public_address
        return acfg

    def _new_leg(self, direction: str) -> CallLeg:
        source, sink = self._new_media()
        return CallLeg(key=next(self._keys), direction=direction, source=source, sink=sink)

    def _forget(self, call: SipCall) -> None:
        key = call.leg.key
        for table in (self._calls, self._rejected):
            if table.get(key) is call:  # not the call that replaced it
                del table[key]
                if table is self._calls and key in self._admitted:
                    self._admission.release(self._admitted.pop(key))
        if call in self._replaced_calls:
            self._replaced_calls.remove(call)

    def _replaced(self, old: SipCall, new: SipCall) -> None:
        self._replaced_calls.append(old)
        if self._calls.get(old.leg.key) is old:
            self._calls[old.leg.key] = new

    def _new_call(self, account: pj.Account, leg: CallLeg,
                  call_id: int = pj.PJSUA_INVALID_ID) -> SipCall:
        return SipCall(account, leg, self.events, self.sample_rate, self._forget, call_id,
                       on_replaced=self._replaced, may_replace=self._may_replace)

    def on_incoming(self, account: pj.Account, prm: pj.OnIncomingCallParam) -> None:
        leg = self._new_leg("inbound")
        leg.source_address = str(prm.rdata.srcAddress)
        call = self._new_call(account, leg, prm.callId)
        info = call.getInfo()
        leg.remote_uri, leg.local_uri = str(info.remoteUri), str(info.localUri)
        leg.sip_call_id = str(info.callIdString)
        invite = str(prm.rdata.wholeMsg)
        leg.call_uuid = call_uuid(invite)
        leg.signalling = via_transport(invite)
        leg.supports_replaces = supports_replaces(invite)
        if not self._authorised(call, invite):
            return
        if self.draining:
            log.info("refusing a call from %s: this worker is draining", leg.source_address)
            self._refuse(call, SERVICE_UNAVAILABLE, "Draining")
            return
        if len(self._calls) >= self.settings.sip_max_calls:
            log.warning("rejecting call from %s: busy (%d calls)", leg.source_address,
                        len(self._calls))
            self._refuse(call, 486)
            return
        refusal = self._admission.admit(leg.source_address)
        if refusal is not None:
            log.warning("refusing a call from %s: %s", leg.source_address, refusal.reason)
            self._refuse(call, SERVICE_UNAVAILABLE, "Too Many Calls From Your Address",
                         headers={"Retry-After": str(refusal.retry_after_s)})
            return
        self._admitted[leg.key] = leg.source_address
        self._calls[leg.key] = call
        op = pj.CallOpParam()
        op.statusCode = 200
        op.txOption.headers.append(_call_uuid_header(leg.call_uuid))
        call.announce = True  # events.incoming once the 200 OK is out
        call.answer(op)

    def _admits(self, address: str, invite: str) -> DigestCheck:
        """Whether a caller may call in: from an allowed network, or (with inbound digest
        credentials set) with valid credentials; an empty allow-list admits anybody."""
        if self._networks and in_networks(address, self._networks):
            return DigestCheck(True)
        if self._digest is None:
            return DigestCheck(not self._networks,
                               "not in SWITCHBOARD_SIP_ALLOWED_NETWORKS")
        return self._digest.check("INVITE", _request_uri(invite),
                                  sip_headers(invite).get("authorization", ""))

    def _may_replace(self, address: str, invite: str) -> bool:
        """Whether an INVITE with Replaces may take a call over (no challenge there: valid
        credentials must come with it)."""
        return self._admits(address, invite).ok

    def _authorised(self, call: SipCall, invite: str) -> bool:
        """Whether the caller may call; else it is challenged (401) or refused (403)."""
        address = call.leg.source_address
        check = self._admits(address, invite)
        if check.ok:
            return True
        if self._digest is not None and check.stale:
            log.info("challenging a call from %s: %s", address, check.reason)
            self._refuse(call, 401, headers={
                "WWW-Authenticate": self._digest.challenge(stale="nonce" in check.reason)})
        else:
            log.warning("rejecting call from %s: %s", address, check.reason)
            self._refuse(call, 403)
        return False

    def _refuse(self, call: SipCall, status: int, reason: str = "", *,
                headers: dict[str, str] | None = None) -> None:
        """Answer an incoming call with a final error; the call object is held until its
        DISCONNECTED (PJSUA sends the answer after the callback)."""
        op = pj.CallOpParam()
        op.statusCode = status
        if reason:
            op.reason = reason
        for name, value in (headers or {}).items():
            op.txOption.headers.append(_header(name, value))
        self._rejected[call.leg.key] = call
        call.answer(op)

    def dial(self, uri: str, headers: dict[str, str] | None = None) -> CallLeg:
        """Place an outbound call (runs on this thread via ``submit``), with extra SIP
        ``headers`` on its INVITE."""
        leg = self._new_leg("outbound")
        call = self._new_call(self.account, leg)
        leg.remote_uri = uri
        self._calls[leg.key] = call
        op = pj.CallOpParam(True)
        for name, value in (headers or {}).items():
            op.txOption.headers.append(_header(name, value))
        try:
            call.makeCall(uri, op)
        except pj.Error:
            self._calls.pop(leg.key, None)
            raise
        leg.sip_call_id = str(call.getInfo().callIdString)
        return leg

    def hangup(self, key: int, status: int = 200) -> None:
        call = self._calls.get(key)
        if call is not None and not call.gone:
            op = pj.CallOpParam()
            op.statusCode = status
            call.hangup(op)

    def transfer(self, key: int, uri: str, call_uuid: str | None = None) -> bool:
        """REFER the call to ``uri``, the call's id in an ``X-Call-UUID`` header (the
        party taking the call over can find it in the console)."""
        call = self._calls.get(key)
        if call is None or call.gone:
            return False
        op = pj.CallOpParam(True)
        if call_uuid:
            op.txOption.headers.append(_call_uuid_header(call_uuid))
        call.xfer(uri, op)
        return True

    def _run_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if not command.future.set_running_or_notify_cancel():
                continue
            try:
                command.future.set_result(command.fn())
            except BaseException as exc:
                command.future.set_exception(_describe(exc))

    def _register_again(self) -> None:
        """Register again once a failed registration's retry time has come."""
        if self.register_at is None or time.monotonic() < self.register_at:
            return
        self.register_at = None
        try:
            self.account.setRegistration(True)
        except pj.Error as exc:  # one already under way (PJSUA's own retry)
            log.info("registering again: %s", exc.info())

    def _check_rtp(self) -> None:
        for call in list(self._calls.values()):
            if call.check_rtp(self.settings.sip_rtp_timeout_s):
                log.warning("call %s: no RTP for %.0f s, hanging up", call.leg.key,
                            self.settings.sip_rtp_timeout_s)
                call.media_index = None
                self.events.rtp_timeout(call.leg)
                try:
                    self.hangup(call.leg.key)
                except pj.Error as exc:
                    log.warning("call %s: hangup failed: %s", call.leg.key, exc.info())

    def _shutdown(self) -> None:
        """Hang up, wait (bounded) for the calls to end, then destroy in PJSUA2's order."""
        if self._calls:
            try:
                self.ep.hangupAllCalls()
            except pj.Error as exc:
                log.warning("hangup on shutdown: %s", exc.info())
            deadline = time.monotonic() + SHUTDOWN_HANGUP_S
            while self._calls and time.monotonic() < deadline:
                self.ep.libHandleEvents(POLL_MS)
        for call in list(self._calls.values()):
            call.release_media()
        self._calls.clear()
        self._rejected.clear()
        self._replaced_calls.clear()
        self._run_commands()
        self._destroy()

    def _destroy(self) -> None:
        account = getattr(self, "account", None)
        if account is not None:
            try:
                account.shutdown()
            except pj.Error as exc:
                log.warning("account shutdown: %s", exc.info())
            del self.account
        try:
            self.ep.libDestroy()
        except pj.Error as exc:
            log.warning("library shutdown: %s", exc.info())
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                break
            command.future.set_exception(RuntimeError("the SIP endpoint stopped"))
        del self.ep


def registered_uri(user: str, registrar: str) -> str:
    """The address of record registered: ``user`` at the registrar's domain
    (``sip:pbx.example.com:5060;transport=tcp`` → ``sip:user@pbx.example.com:5060``)."""
    schemed = registrar.lower().startswith(("sip:", "sips:"))
    host = registrar.split(":", 1)[1] if schemed else registrar
    host = host.split(";", 1)[0].rsplit("@", 1)[-1]
    return f"sip:{user}@{host}"


def call_uuid(message: str) -> str:
    """The ``X-Call-UUID`` of a SIP message (as 32 hex digits), else a new one."""
    given = sip_headers(message).get(CALL_UUID_HEADER.lower(), "")
    if 32 <= len(given) <= 36:
        with contextlib.suppress(ValueError):
            return uuid.UUID(given).hex
    return uuid.uuid4().hex


def _request_uri(message: str) -> str:
    """The Request-URI of a SIP request's first line ("" if it has none)."""
    parts = message.split("\r\n", 1)[0].split(" ")
    return parts[1] if len(parts) == 3 else ""


def _header(name: str, value: str) -> pj.SipHeader:
    header = pj.SipHeader()
    header.hName, header.hValue = name, value
    return header


def _call_uuid_header(value: str) -> pj.SipHeader:
    return _header(CALL_UUID_HEADER, value)


def _describe(exc: BaseException) -> BaseException:
    if isinstance(exc, pj.Error):
        return RuntimeError(str(exc.info()))
    return exc


def _setup_error(exc: BaseException) -> SipSetupError:
    if isinstance(exc, SipSetupError):
        return exc
    detail = str(exc.info()) if isinstance(exc, pj.Error) else str(exc)
    return SipSetupError(
        f"could not start SIP: {detail}. Check that SWITCHBOARD_SIP_HOST/SIP_PORT (and "
        "SIP_TLS_PORT, SIP_RTP_PORT) name a local address and free ports"
    )
