"""The ``switchboard`` console command."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from switchboard.base.logs import setup_logging
from switchboard.base.settings import Settings, get_settings

if TYPE_CHECKING:
    from switchboard.bench.kit import Report

app = typer.Typer(
    help="Switchboard: a self-hosted contact-center voice agent.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database migrations and demo data.", no_args_is_help=True)
dialog_app = typer.Typer(help="The Rasa bot: install check, training.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that print figures (not tests).", no_args_is_help=True)
analytics_app = typer.Typer(
    help="Post-call analytics: the Celery worker and aggregate figures.", no_args_is_help=True
)
app.add_typer(db_app, name="db")
app.add_typer(dialog_app, name="dialog")
app.add_typer(bench_app, name="bench")
app.add_typer(analytics_app, name="analytics")
users_app = typer.Typer(help="Console users and API tokens.", no_args_is_help=True)
app.add_typer(users_app, name="users")


def _setup_logging(settings: Settings, quiet: bool = False) -> None:
    setup_logging("WARNING" if quiet else settings.log_level)


def _metrics_dir(path: Path) -> None:
    """An empty directory where every process of the node keeps its metrics
    (prometheus-client's multiprocess mode, chosen when prometheus_client is imported:
    set before the node's modules are)."""
    import os
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)


def _run_until_signalled(poll: Callable[[], int | None], exited: str) -> None:
    """Block until Ctrl-C or SIGTERM; fail with ``exited`` if ``poll()`` says the
    foreground service died meanwhile."""
    import signal
    import threading

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(1.0):
        if poll() is not None:
            raise _fail(exited)


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


@app.command()
def run(
    sip_workers: Annotated[
        int | None,
        typer.Option(min=1, help="SIP worker processes (4 calls each); >1 puts Kamailio "
                     "in front on the SIP port. Default: SWITCHBOARD_SIP_WORKERS."),
    ] = None,
) -> None:
    """Start a node and supervise it until Ctrl-C: Rasa and its action server, the
    analytics worker, the web app (softphone), the SIP workers and, with several workers,
    Kamailio. A child that dies is restarted. Trains the bot first if its files changed."""
    settings = get_settings()
    _metrics_dir(settings.data_dir / "run" / "metrics")
    from switchboard.supervisor import Supervisor, SupervisorError

    if sip_workers is not None:
        settings = settings.model_copy(update={"sip_workers": sip_workers})
    _setup_logging(settings)
    try:
        Supervisor(settings).run()
    except SupervisorError as exc:
        raise _fail(str(exc)) from None


@app.command()
def drain(
    wait: Annotated[bool, typer.Option(
        help="Wait until the node has stopped (else return once it drains).")] = True,
) -> None:
    """Drain the node running from this data directory for a rolling update: it takes no
    new calls (answers OPTIONS and INVITEs with 503, so Kamailio in front sends callers to
    other nodes), lets its calls end (at most SWITCHBOARD_DRAIN_TIMEOUT_S), then stops.
    The same as sending SIGTERM to `switchboard run`."""
    import os
    import signal
    import time

    from switchboard.supervisor import pid_file

    settings = get_settings()
    path = pid_file(settings)
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        raise _fail(f"no node runs from {settings.data_dir} (no live PID in {path}); "
                    "start one with `switchboard run`") from None
    typer.echo(f"node {settings.effective_node_id} (pid {pid}) is draining: no new calls, "
               f"the calls up may take up to {settings.drain_timeout_s:.0f} s")
    if not wait:
        return
    started = time.monotonic()
    deadline = started + settings.drain_timeout_s + 60
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            typer.echo(f"node stopped after {time.monotonic() - started:.0f} s")
            return
        time.sleep(1.0)
        if int(time.monotonic() - started) % 10 == 0:
            typer.echo(f"  still draining after {time.monotonic() - started:.0f} s")
    raise _fail(f"the node (pid {pid}) is still running after the drain timeout; see "
                f"{settings.data_dir / 'logs'}")


@app.command()
def front(
    nodes: Annotated[str, typer.Option(
        help="Comma list of the nodes' SIP entries (host:port), e.g. "
        "127.0.0.1:5070,127.0.0.1:5080.")],
    port: Annotated[int | None, typer.Option(
        help="SIP port callers use. Default: SWITCHBOARD_SIP_PORT.")] = None,
) -> None:
    """Run Kamailio in front of several nodes until Ctrl-C: each caller's calls go to the
    same node (hash on the From URI) while it answers; a node that stops answering OPTIONS
    or INVITEs is passed over within seconds, so its callers reach another node."""
    from telephony.kamailio import KamailioError, KamailioProxy

    settings = get_settings()
    _setup_logging(settings)
    targets = [node.strip() for node in nodes.split(",") if node.strip()]
    try:
        with KamailioProxy(settings, targets, port=port, name="front") as proxy:
            typer.echo(f"front: {proxy.uri} in front of {', '.join(targets)} "
                       f"(log {proxy.log_path})")
            _run_until_signalled(proxy.poll, f"Kamailio exited; see {proxy.log_path}")
    except KamailioError as exc:
        raise _fail(str(exc)) from None


@app.command()
def web() -> None:
    """Run the web app alone: softphone page and WebRTC gateway on web_host:web_port.

    Loads the speech models first; GET /healthz answers once calls can be taken.
    SIGTERM or Ctrl-C hangs up the browser calls and exits."""
    from admin.server import WebServerError, serve
    from switchboard.conversation.engines import EngineError
    from switchboard.node import Node

    settings = get_settings()
    _setup_logging(settings)
    try:
        serve(settings, partial(Node.create, desk=True))
    except (WebServerError, EngineError) as exc:
        raise _fail(str(exc)) from None


@app.command("speech-server")
def speech_server(
    bind: Annotated[str | None, typer.Option(
        help="ipc:///path.sock or tcp://host:port (default: SWITCHBOARD_SPEECH_BIND, else "
             "an ipc socket in data_dir/run).")] = None,
) -> None:
    """Serve speech to the node's processes: one Whisper and one Piper, on the GPU when
    there is one. Runs until SIGTERM/Ctrl-C. On another host bind tcp://0.0.0.0:PORT
    with SWITCHBOARD_SPEECH_SECRET set (the same on every node)."""
    from speech.grammar import GrammarRecognizer
    from speech.service.protocol import Address, AddressError
    from speech.service.server import SecurityError, SpeechServer, serve_until_signalled
    from speech.stt import WhisperSTT
    from speech.tts import PiperTTS
    from switchboard.conversation.engines import EngineError, start_engine
    from switchboard.node import local_speech_address, stt_config, tts_config

    settings = get_settings()
    _setup_logging(settings)
    try:
        address = Address.parse(bind or settings.speech_bind) if (
            bind or settings.speech_bind) else local_speech_address(settings, "speech-0")
    except AddressError as exc:
        raise _fail(str(exc), 2) from None
    try:
        stt = start_engine("Whisper", lambda: WhisperSTT.from_config(stt_config(settings)))
        tts = start_engine("Piper", lambda: PiperTTS.from_config(tts_config(settings)))
        grammar = start_engine("PocketSphinx grammars", GrammarRecognizer)
    except EngineError as exc:
        raise _fail(str(exc)) from None
    logging.getLogger(__name__).info("Whisper on %s, Piper on %s", stt.device, tts.device)
    try:
        server = SpeechServer(stt, tts, address, grammar=grammar,
                              secret=settings.speech_secret)
        asyncio.run(serve_until_signalled(server))
    except (SecurityError, OSError) as exc:
        raise _fail(str(exc)) from None
    finally:
        stt.close()
        tts.close()
        grammar.close()


@app.command()
def simulate(
    caller_wav: Annotated[Path, typer.Argument(help="The caller's audio (WAV/FLAC/OGG).")],
    reply_wav: Annotated[
        Path | None, typer.Option("--reply-wav", help="Write what the caller heard here.")
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the turn log (JSON) here.")
    ] = None,
    fast: Annotated[
        bool, typer.Option("--fast/--realtime", help="Run faster than real time.")
    ] = False,
    rate: Annotated[
        int, typer.Option(help="Call sample rate: 8000 (telephone) or 16000 (wideband).")
    ] = 16000,
    tail: Annotated[
        float, typer.Option(help="Seconds of silence the caller waits after the bot is done.")
    ] = 1.0,
    rasa_url: Annotated[
        str | None, typer.Option(help="Rasa server; started for the run if unreachable.")
    ] = None,
) -> None:
    """Run one call through the real pipeline with CALLER_WAV as the caller."""
    from switchboard.simulate import SUPPORTED_RATES, AudioFileError, load_caller_audio

    settings = get_settings()
    if rasa_url:
        settings = settings.model_copy(update={"rasa_url": rasa_url})
    _setup_logging(settings, quiet=True)
    if rate not in SUPPORTED_RATES:
        raise _fail(f"--rate must be one of {SUPPORTED_RATES}, got {rate}", 2)
    try:
        pcm = load_caller_audio(caller_wav, rate)
    except AudioFileError as exc:
        raise _fail(str(exc), 2) from None
    asyncio.run(_simulate(settings, pcm, rate, fast, tail, reply_wav, json_path))


async def _simulate(
    settings: Settings, pcm: object, rate: int, fast: bool, tail: float,
    reply_wav: Path | None, json_path: Path | None,
) -> None:
    import numpy as np

    from switchboard.node import Node, services_ready
    from switchboard.simulate import simulate_call, write_outputs

    assert isinstance(pcm, np.ndarray)
    async with services_ready(settings) as settings:
        node = Node.create(settings, desk=not fast)  # a handoff waits for an agent, too
        try:
            sim = await simulate_call(node, pcm, rate, realtime=not fast, tail_s=tail)
        finally:
            await node.aclose()
    for turn in sim.result.turns:
        stages = [f"{name} {getattr(turn, name):.0f} ms"
                  for name in ("endpoint_ms", "stt_ms", "dialog_ms", "tts_ms", "response_ms")
                  if getattr(turn, name) is not None]
        flag = " [barge-in]" if turn.barge_in else ""
        typer.echo(f"{turn.speaker:>6}: {turn.text}{flag}")
        if stages:
            typer.secho(f"        {', '.join(stages)}", dim=True)
    typer.echo(f"call {sim.result.call_id} ended: {sim.result.reason} "
               f"({len(sim.bot_audio) / rate:.1f} s of audio in {sim.wall_s:.1f} s)")
    write_outputs(sim, reply_wav, json_path)


@app.command("prepare-caller")
def prepare_caller(
    speech: Annotated[Path, typer.Argument(help="The caller's speech (WAV/FLAC/OGG).")],
    out: Annotated[Path, typer.Argument(help="The caller recording to write (WAV).")],
    rate: Annotated[
        int, typer.Option(help="Sample rate of the line: 8000 for G.711 (PCMU/PCMA).")
    ] = 8000,
    lead: Annotated[
        float, typer.Option(min=0.0, max=60.0, help="Seconds of silence first (the greeting).")
    ] = 3.0,
    trail: Annotated[
        float, typer.Option(min=0.0, max=60.0, help="Seconds of silence after (the answer).")
    ] = 6.0,
) -> None:
    """Turn SPEECH into a caller recording for a SIP phone (baresip's aufile, SIPp):
    mono 16-bit PCM at the line's rate, with silence around the speech."""
    import numpy as np
    import soundfile

    from switchboard.simulate import AudioFileError, load_caller_audio

    try:
        pcm = load_caller_audio(speech, rate)
    except AudioFileError as exc:
        raise _fail(str(exc), 2) from None
    padded = np.concatenate([np.zeros(int(lead * rate), np.int16), pcm,
                             np.zeros(int(trail * rate), np.int16)])
    out.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(out), padded, rate, subtype="PCM_16")
    typer.echo(f"{out}: {len(padded) / rate:.1f} s at {rate} Hz "
               f"({lead:.1f} s silence, {len(pcm) / rate:.1f} s speech, {trail:.1f} s silence)")


@app.command("sip-worker")
def sip_worker(
    port: Annotated[
        int | None, typer.Option(help="SIP port (default: SWITCHBOARD_SIP_PORT).")
    ] = None,
    rtp_port: Annotated[
        int | None, typer.Option(help="First RTP port (default: SWITCHBOARD_SIP_RTP_PORT).")
    ] = None,
) -> None:
    """Run one SIP media worker: answer calls with the bot until SIGTERM/Ctrl-C.

    Uses the Rasa server at SWITCHBOARD_RASA_URL (`switchboard run` starts one)."""
    from switchboard.conversation.engines import EngineError
    from telephony.sip.endpoint import SipSetupError

    settings = get_settings()
    overrides = {k: v for k, v in (("sip_port", port), ("sip_rtp_port", rtp_port)) if v}
    settings = settings.model_copy(update=overrides)
    _setup_logging(settings)
    try:
        asyncio.run(_sip_worker(settings))
    except (SipSetupError, EngineError) as exc:
        raise _fail(str(exc)) from None


async def _sip_worker(settings: Settings) -> None:
    from switchboard.node import Node
    from telephony.sip.worker import run_worker

    node = Node.create(settings, desk=True)
    try:
        await run_worker(node)
    finally:
        await node.aclose()


@app.command("call")
def call(
    uri: Annotated[str, typer.Argument(help="Who to call, e.g. sip:alice@127.0.0.1:5062.")],
    port: Annotated[
        int, typer.Option(help="Local SIP port for this call (0 = any free port).")
    ] = 0,
    rasa_url: Annotated[
        str | None, typer.Option(help="Rasa server; started for the call if unreachable.")
    ] = None,
    ring_timeout: Annotated[
        float | None, typer.Option(
            min=0.1, max=600, help="Seconds to ring before giving up "
            "(default: SWITCHBOARD_SIP_RING_TIMEOUT_S).")
    ] = None,
) -> None:
    """Call URI over SIP and let the bot talk to whoever answers; exits when the call ends."""
    from telephony.sip.endpoint import SipSetupError
    from telephony.sip.worker import SipCallFailed

    if not uri.startswith(("sip:", "sips:")):
        raise _fail(f"{uri!r} is not a SIP URI; expected e.g. sip:alice@127.0.0.1:5062", 2)
    settings = get_settings()
    settings = settings.model_copy(update={"sip_port": port, "sip_transports": "udp"})
    if rasa_url:
        settings = settings.model_copy(update={"rasa_url": rasa_url})
    if ring_timeout is not None:
        settings = settings.model_copy(update={"sip_ring_timeout_s": ring_timeout})
    _setup_logging(settings, quiet=True)
    try:
        asyncio.run(_call(settings, uri))
    except (SipSetupError, SipCallFailed) as exc:
        raise _fail(str(exc)) from None


async def _call(settings: Settings, uri: str) -> None:
    from switchboard.node import Node, services_ready
    from telephony.sip.worker import SipWorker

    async with services_ready(settings) as settings:
        node = Node.create(settings)
        worker = SipWorker(node)
        try:
            await worker.start()
            result = await worker.call(uri)
        finally:
            await worker.aclose()
            await node.aclose()
    for turn in result.turns:
        typer.echo(f"{turn.speaker:>6}: {turn.text}")
    typer.echo(f"call {result.call_id} ended: {result.reason}")


JsonOption = Annotated[
    Path | None, typer.Option("--json", help="Also write the figures here (JSON).")]


def _report(report: Report, json_path: Path | None) -> None:
    typer.echo(report.table())
    if json_path is not None:
        report.write_json(json_path)


def _bench_report(run: Callable[[], Report], json_path: Path | None) -> None:
    """Run a bench and print its report; a bench that cannot run says why and exits 1."""
    from switchboard.bench.kit import BenchError

    try:
        report = run()
    except BenchError as exc:
        raise _fail(str(exc)) from None
    _report(report, json_path)


@bench_app.command("pipeline")
def bench_pipeline(
    utterances: Annotated[int, typer.Option(min=1, max=200, help="Caller turns to time.")] = 12,
    rate: Annotated[int, typer.Option(help="Call sample rate (8000 or 16000).")] = 16000,
    json_path: JsonOption = None,
) -> None:
    """Per-stage latency percentiles of real turns (VAD, Whisper, Rasa, Piper) in real time,
    and voice-to-voice latency at the caller."""
    settings = get_settings()
    _setup_logging(settings, quiet=True)
    _report(asyncio.run(_bench(settings, utterances, rate)), json_path)


async def _bench(settings: Settings, utterances: int, rate: int) -> Report:
    from switchboard.bench.pipeline import bench_pipeline as run_bench
    from switchboard.node import Node, services_ready

    async with services_ready(settings) as settings:
        node = Node.create(settings)
        try:
            return await run_bench(node, utterances, rate)
        finally:
            await node.aclose()


@bench_app.command("console")
def bench_console(
    calls: Annotated[int, typer.Option(min=1, max=1_000_000,
                                       help="Synthetic analysed calls to seed.")] = 10_000,
    requests: Annotated[int, typer.Option(min=1, max=1000, help="Requests per page.")] = 20,
    database_url: Annotated[str | None, typer.Option(
        help="An EMPTY database to seed (e.g. a fresh PostgreSQL database); default: a "
             "temporary SQLite file.")] = None,
    json_path: JsonOption = None,
) -> None:
    """Console and API response times over a database of many calls (in-process)."""
    from switchboard.bench.console import bench_console as run_bench

    _bench_report(lambda: run_bench(calls, requests, database_url), json_path)


@bench_app.command("webrtc")
def bench_webrtc(
    calls: Annotated[int, typer.Option(min=1, max=50, help="Concurrent browser-like calls.")] = 1,
    console_load: Annotated[int, typer.Option(
        min=0, max=16, help="Threads reading the console's heaviest API requests from the "
                            "same web app during the calls.")] = 0,
    json_path: JsonOption = None,
) -> None:
    """Concurrent aiortc calls against the web app: connect time, voice-to-voice latency
    at the caller, CPU per call, frames the web app sent late. Starts a web app for the
    run if none answers."""
    from switchboard.bench.webrtc import bench_webrtc as run_bench

    settings = get_settings()
    _setup_logging(settings, quiet=True)
    _bench_report(lambda: asyncio.run(run_bench(settings, calls, console_load)), json_path)


@bench_app.command("desk")
def bench_desk(
    calls: Annotated[int, typer.Option(min=1, max=20, help="Calls, one after another.")] = 3,
    json_path: JsonOption = None,
) -> None:
    """The agents' desk: from an agent's accept to their voice at the caller, and the
    latency the agent's bridge adds each way (a real pipeline, Redis, console; aiortc as
    the agent's browser)."""
    from switchboard.bench.desk import bench_desk as run_bench

    settings = get_settings()
    _setup_logging(settings, quiet=True)
    _bench_report(lambda: asyncio.run(run_bench(settings, calls)), json_path)


@bench_app.command("sip")
def bench_sip(
    calls: Annotated[int, typer.Option(min=1, max=200, help="Calls to place in all.")] = 4,
    concurrency: Annotated[int, typer.Option(min=1, max=32, help="Calls at a time.")] = 1,
    turns: Annotated[int, typer.Option(min=1, max=8, help="Caller lines per call.")] = 3,
    target: Annotated[
        str | None,
        typer.Option(help="SIP URI of a running node; default: start one for the run "
                     "with enough workers (4 calls each) and Kamailio when needed."),
    ] = None,
    json_path: JsonOption = None,
) -> None:
    """Real SIP calls (PJSUA2 callers in other processes, G.711): voice-to-voice latency
    at the caller, call setup time, failed calls, CPU per call."""
    from switchboard.bench.sip import bench_sip as run_bench

    settings = get_settings()
    _setup_logging(settings, quiet=True)
    _report(run_bench(settings, calls=calls, concurrency=concurrency, turns=turns,
                      target=target), json_path)


@bench_app.command("soak")
def bench_soak(
    minutes: Annotated[float, typer.Option(min=0.1, max=24 * 60,
                                           help="How long to keep calling.")] = 30.0,
    concurrency: Annotated[int, typer.Option(min=1, max=32, help="Calls at a time.")] = 4,
    turns: Annotated[int, typer.Option(min=1, max=8, help="Caller lines per call.")] = 2,
    json_path: JsonOption = None,
) -> None:
    """Cycle real SIP calls through a node it starts for MINUTES, CONCURRENCY at a time,
    sampling the node's memory, file descriptors, threads, processes, open calls and
    database rows after each round: flat lines, and no call left open at the end."""
    from switchboard.bench.soak import bench_soak as run_bench

    settings = get_settings()
    _setup_logging(settings, quiet=True)
    _bench_report(lambda: run_bench(settings, minutes=minutes, concurrency=concurrency,
                                    turns=turns), json_path)


@bench_app.command("failover")
def bench_failover(
    kills: Annotated[int, typer.Option(
        min=1, max=200, help="Node kills to time (the two nodes take turns).")] = 20,
    database_url: Annotated[str | None, typer.Option(
        help="An EMPTY database for the nodes (e.g. a fresh PostgreSQL database); default: "
        "a SQLite file in data_dir/bench-failover.")] = None,
    redial_after_s: Annotated[float, typer.Option(
        min=0.0, max=60.0,
        help="Seconds the cut-off caller waits after the kill before calling again.")] = 0.0,
    rejoin: Annotated[bool, typer.Option(
        help="The survivor calls the cut-off caller back (INVITE with Replaces, "
        "sip_rejoin_lost_calls); the caller never redials.")] = False,
    json_path: JsonOption = None,
) -> None:
    """Kill a whole node mid-call KILLS times (two nodes behind `switchboard front`): time
    to detect it, time until the redial is answered (or, with --rejoin, the call taken
    back) and the resumed opening heard, turns lost, calls resumed. Starts Redis, speech,
    Rasa, the nodes and the front for the run."""
    from dialog.runtime import RasaError
    from switchboard.base.children import ChildError
    from switchboard.bench.failover import FailoverError
    from switchboard.bench.failover import bench_failover as run_bench

    settings = get_settings()
    _setup_logging(settings, quiet=True)
    try:
        report = run_bench(settings, kills, database_url=database_url,
                           redial_after_s=redial_after_s, rejoin=rejoin)
    except (FailoverError, ChildError, RasaError) as exc:
        raise _fail(str(exc)) from None
    _report(report, json_path)


@bench_app.command("grammar")
def bench_grammar(
    numbers: Annotated[int, typer.Option(min=1, max=500,
                                         help="Order numbers per voice and condition.")] = 20,
    snr_db: Annotated[float, typer.Option(help="Signal to noise ratio of the noisy set.")
                      ] = 15.0,
    json_path: JsonOption = None,
) -> None:
    """Digit strings over a telephone line: Whisper alone, the digit grammar
    (PocketSphinx) alone, and both combined, for two voice families, clean and noisy."""
    from speech.grammar import GrammarRecognizer
    from switchboard.bench.grammar import bench_grammar as run_bench

    with _bench_models(GrammarRecognizer) as (tts, stt, grammar):
        _report(run_bench(tts, stt, grammar, numbers, snr_db), json_path)


@bench_app.command("turn")
def bench_turn(
    pause_ms: Annotated[int, typer.Option(min=20, max=2000,
                                          help="Silence after the speech when asked.")] = 120,
    rate: Annotated[int, typer.Option(help="8000 (telephone) or 16000 (browser).")] = 8000,
    json_path: JsonOption = None,
) -> None:
    """How well Smart Turn tells finished turns from callers pausing mid-sentence
    (8 kHz, two voice families), per threshold."""
    from speech.turn import SmartTurn
    from switchboard.bench.turn import bench_turn as run_bench

    with _bench_models(SmartTurn) as (tts, stt, model):
        _report(run_bench(tts, stt, model, pause_ms, rate), json_path)


@contextmanager
def _bench_models(third: Callable[[], Any]) -> Iterator[tuple[Any, Any, Any]]:
    """Piper, Whisper and ``third()`` in this process (benches of the models themselves,
    not of a node), closed afterwards."""
    from speech.stt import WhisperSTT
    from speech.tts import PiperTTS
    from switchboard.node import stt_config, tts_config

    settings = get_settings()
    _setup_logging(settings, quiet=True)
    engines = [PiperTTS.from_config(tts_config(settings)),
               WhisperSTT.from_config(stt_config(settings)), third()]
    try:
        yield engines[0], engines[1], engines[2]
    finally:
        for engine in engines:
            engine.close()


@bench_app.command("speech")
def bench_speech(
    streams: Annotated[str, typer.Option(
        help="Comma list of stream counts to run in turn (each a busy call).")] = "1,2,4,8",
    seconds: Annotated[float, typer.Option(min=1.0, max=600.0,
                                           help="Seconds per stream count.")] = 10.0,
    device: Annotated[str, typer.Option(
        help="cpu or cuda for the speech server started for the run (ignored with "
             "SWITCHBOARD_SPEECH_SERVERS).")] = "cpu",
    json_path: JsonOption = None,
) -> None:
    """Requests per second and latency percentiles (client, queue wait, compute) of the
    speech servers as concurrent streams grow."""
    try:
        counts = [int(part) for part in streams.split(",") if part.strip()]
    except ValueError:
        raise _fail(f"--streams must be a comma list of numbers, got {streams!r}", 2) from None
    if not counts or not all(1 <= n <= 512 for n in counts):
        raise _fail("--streams: each count must be from 1 to 512", 2)
    if device not in ("cpu", "cuda"):
        raise _fail(f"--device must be cpu or cuda, got {device!r}", 2)
    settings = get_settings().model_copy(update={"stt_device": device, "tts_device": device})
    _setup_logging(settings, quiet=True)
    _report(asyncio.run(_bench_speech(settings, counts, seconds, device)), json_path)


async def _bench_speech(settings: Settings, counts: list[int], seconds: float, device: str
                        ) -> Report:
    from switchboard.bench.kit import piper_lines
    from switchboard.bench.speech import RATE
    from switchboard.bench.speech import bench_speech as run_bench
    from switchboard.node import speech_pool, speech_ready

    lines = await asyncio.to_thread(piper_lines, settings, 8, RATE)
    async with speech_ready(settings) as settings:
        pool = speech_pool(settings)
        try:
            await asyncio.to_thread(pool.wait_ready)
            return await run_bench(pool, lines, counts, seconds, device)
        finally:
            await asyncio.to_thread(pool.close)


def _database(settings: Settings, *, demo_data: bool = False) -> Any:
    """The migrated database's session factory, or a clear error and exit 1."""
    from switchboard.storage.database import DatabaseError, prepare_database

    try:
        return prepare_database(settings.effective_database_url, demo_data=demo_data)
    except DatabaseError as exc:
        raise _fail(str(exc)) from None


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply the database migrations (and seed the demo orders if enabled)."""
    settings = get_settings()
    _database(settings, demo_data=settings.demo_data)
    typer.echo("database is up to date")


@analytics_app.command("worker")
def analytics_worker() -> None:
    """Run the Celery worker that analyses ended calls (migrates the database first)."""
    settings = get_settings()
    _database(settings, demo_data=settings.demo_data)
    from analytics.celery_app import app as celery_app

    celery_app.worker_main([
        "worker", "--loglevel", settings.log_level.upper(),
        "--pool", settings.celery_worker_pool,
        "--concurrency", str(settings.celery_worker_concurrency),
        "--hostname", f"analytics-{settings.worker_name or 'node'}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
        "--beat", "--schedule",
        str(settings.data_dir / f"celery-beat-{settings.worker_name or 'node'}"),
    ])


@analytics_app.command("aggregates")
def analytics_aggregates(
    days: Annotated[float, typer.Option(min=0.01, help="Look back this many days.")] = 7.0,
) -> None:
    """Print the aggregate figures of the calls started in the last DAYS days (JSON)."""
    import json
    from datetime import timedelta

    from analytics.aggregates import compute_aggregates
    from switchboard.storage.models import utcnow

    sessions = _database(get_settings())
    until = utcnow()
    figures = compute_aggregates(sessions, since=until - timedelta(days=days), until=until)
    typer.echo(json.dumps(figures.as_dict(), indent=2))


def _accounts() -> Any:
    from admin.accounts import AccountRepository

    settings = get_settings()
    return AccountRepository.from_settings(settings, _database(settings))


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise _fail("--password-stdin: standard input had no password on its first line")
        return password
    if not sys.stdin.isatty():
        raise _fail("no terminal to ask for the password; pipe it with --password-stdin")
    password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return str(password)


@users_app.command("create")
def users_create(
    name: Annotated[str, typer.Argument(help="User name (letters, digits, . _ @ -).")],
    role: Annotated[str, typer.Option(help="admin, supervisor or agent.")] = "agent",
    password_stdin: Annotated[bool, typer.Option(
        "--password-stdin", help="Read the password from standard input's first line "
        "instead of prompting.")] = False,
) -> None:
    """Create a console user. There is no default password: it is prompted for (twice) or
    read from standard input."""
    from admin.accounts import AccountError, validate_role, validate_username

    try:  # check the cheap things before asking for a password
        validate_username(name)
        validate_role(role)
    except AccountError as exc:
        raise _fail(str(exc)) from None
    accounts = _accounts()
    if accounts.find_user(name.strip()) is not None:
        raise _fail(f"a user named {name.strip()!r} already exists")
    try:
        user = accounts.create_user(name, _read_password(password_stdin), role)
    except AccountError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"created {user.username} ({user.role})")


@users_app.command("list")
def users_list() -> None:
    """List console users."""
    for user in _accounts().list_users():
        state = "active" if user.active else "off"
        typer.echo(f"{user.username}\t{user.role}\t{state}\tlast sign-in "
                   f"{user.last_login_at.isoformat() if user.last_login_at else '-'}")


@users_app.command("password")
def users_password(
    name: Annotated[str, typer.Argument(help="User name.")],
    password_stdin: Annotated[bool, typer.Option(
        "--password-stdin", help="Read the new password from standard input.")] = False,
) -> None:
    """Set a user's password (ends their console sessions)."""
    from admin.accounts import AccountError

    accounts = _accounts()
    user = accounts.find_user(name.strip())
    if user is None:
        raise _fail(f"no user named {name.strip()!r}")
    try:
        accounts.set_password(user.id, _read_password(password_stdin))
    except AccountError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"password of {user.username} changed")


@users_app.command("token")
def users_token(
    name: Annotated[str, typer.Argument(help="User the token acts for (with their role).")],
    label: Annotated[str, typer.Option("--name", help="What uses the token.")] = "cli",
) -> None:
    """Create an API token for the REST API and print it (it is shown only once)."""
    from admin.accounts import AccountError

    accounts = _accounts()
    user = accounts.find_user(name.strip())
    if user is None:
        raise _fail(f"no user named {name.strip()!r}")
    try:
        token, _ = accounts.create_token(user.id, label)
    except AccountError as exc:
        raise _fail(str(exc)) from None
    typer.echo(token)


@dialog_app.command("train")
def dialog_train(
    force: Annotated[bool, typer.Option(help="Train even if the bot has not changed.")] = False,
) -> None:
    """Train the Rasa model if the bot's files changed (content hash)."""
    from dialog.runtime import RasaError, ensure_trained
    from switchboard.node import rasa_config

    settings = get_settings()
    _setup_logging(settings)
    try:
        model = ensure_trained(rasa_config(settings), force=force)
    except RasaError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"model: {model}")


@dialog_app.command("serve")
def dialog_serve() -> None:
    """Run the Rasa server and its action server until Ctrl-C: a dialog tier that several
    nodes share (run them with SWITCHBOARD_RASA_MANAGED=false and this server's URL and
    API token; with SWITCHBOARD_REDIS_URL its trackers and locks live in Redis)."""
    from dialog.runtime import RasaError, RasaServers, ensure_trained
    from dialog.service import API_TOKEN_FILE, publish_api_token, with_api_token
    from switchboard.node import rasa_config

    settings = get_settings()
    _setup_logging(settings)
    try:
        config = with_api_token(rasa_config(settings))
        publish_api_token(config)
        with RasaServers(config, ensure_trained(config)) as servers:
            typer.echo(f"dialog: Rasa at {servers.url}, trackers "
                       f"{'in Redis' if settings.redis_url else 'in memory'}; its API token "
                       f"is in {settings.data_dir / API_TOKEN_FILE} "
                       "(SWITCHBOARD_RASA_API_TOKEN of the nodes)")
            _run_until_signalled(servers.poll, "the dialog servers exited; see "
                                 f"{settings.data_dir / 'logs'}")
    except RasaError as exc:
        raise _fail(str(exc)) from None


@app.command("settings")
def show_settings(
    markdown: Annotated[bool, typer.Option(help="Print the README's settings table.")] = False,
) -> None:
    """Show every setting with its environment variable and current value."""
    from switchboard.base.settings import settings_table

    if markdown:
        typer.echo(settings_table())
        return
    settings = get_settings()
    for name in Settings.model_fields:
        typer.echo(f"SWITCHBOARD_{name.upper()}={getattr(settings, name)}")
