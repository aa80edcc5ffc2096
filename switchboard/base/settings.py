"""One typed settings object for the whole node (environment prefix ``SWITCHBOARD_``)."""

from __future__ import annotations

import socket
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class Settings(BaseSettings):
    """Every knob of a Switchboard node. Each field maps to ``SWITCHBOARD_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="SWITCHBOARD_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # --- general -----------------------------------------------------------------------
    data_dir: Path = Field(
        default=PROJECT_ROOT / "var",
        description="Where the SQLite database, Rasa models, recordings and logs live.",
    )
    log_level: str = Field(default="INFO", description="Python logging level.")
    worker_name: str = Field(
        default="", description="Name of this process's calls in the database (set by `run`)."
    )

    # --- storage -----------------------------------------------------------------------
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL; empty means a SQLite file in data_dir. "
        "PostgreSQL: postgresql+psycopg://user:pass@host/db",
    )
    demo_data: bool = Field(default=True, description="Seed the demo orders on start.")
    spool_retry_s: float = Field(
        default=5.0, gt=0, description="While the database cannot be reached, a call's writes "
        "wait on disk (data_dir/spool); how often to try writing them.")
    redis_url: str = Field(
        default="",
        description="Redis shared by the nodes: heartbeats, the call registry and each call's "
        "conversation state (empty: one node, nothing to recover). redis://host:6379/0")

    # --- several nodes -----------------------------------------------------------------
    node_id: str = Field(
        default="", description="This node's name among the nodes sharing Redis and the "
        "database; empty means the host name.")
    recovery_window_s: float = Field(
        default=600.0, gt=0,
        description="A caller cut off by a lost node who calls again within this long "
        "resumes the conversation where it was.")
    heartbeat_interval_s: float = Field(
        default=0.5, gt=0, description="How often a node renews its heartbeat in Redis.")
    heartbeat_ttl_s: float = Field(
        default=2.0, gt=0,
        description="A node whose heartbeat is this old is lost: a survivor ends its calls "
        "(node_lost) and queues their analysis.")
    sip_rejoin_lost_calls: bool = Field(
        default=False,
        description="A survivor calls the SIP callers of a lost node back itself: an INVITE "
        "with Replaces (RFC 3891) to the caller's Contact takes over the cut-off call, so "
        "the caller need not redial. Only for callers whose INVITE said 'Supported: "
        "replaces' and whose Contact every node can reach.")
    rejoin_timeout_s: float = Field(
        default=15.0, gt=0,
        description="A lost call not taken back from its caller this long after its node "
        "was found lost is left to the caller's redial.")
    otlp_endpoint: str = Field(
        default="",
        description="OpenTelemetry: an OTLP/HTTP collector (e.g. http://127.0.0.1:4318) to "
        "send each call's trace to (a span per call, per bot reply and per stage); empty: "
        "no tracing.")
    drain_timeout_s: float = Field(
        default=300.0, ge=0,
        description="A draining node (`switchboard drain`, SIGTERM) waits this long for its "
        "calls to end, then ends the rest (they resume on a redial to another node).")

    # --- speech: STT -------------------------------------------------------------------
    stt_model: str = Field(
        default="tiny.en",
        description="Whisper model: 'tiny.en', 'base' or a CTranslate2 model directory.",
    )
    stt_device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="STT device.")
    stt_compute_type: str = Field(
        default="auto", description="CTranslate2 compute type; auto = float16 on GPU, int8 on CPU."
    )
    stt_language: str = Field(default="en", description="Language passed to Whisper.")
    stt_beam_size: int = Field(default=1, ge=1, description="Whisper beam size.")
    stt_cpu_threads: int = Field(default=2, ge=1, description="CPU threads for Whisper.")
    stt_batch_size: int = Field(
        default=0, ge=0, le=64,
        description="Utterances a speech server transcribes in one pass of the model: 0 = 8 "
        "on a GPU, 1 on the CPU (where batching gains nothing).")

    # --- speech: TTS -------------------------------------------------------------------
    tts_voice: str = Field(
        default="en_US-joe-medium",
        description="Piper voice: 'en_US-joe-medium' or a path to a voice .onnx file.",
    )
    tts_device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="TTS device.")
    tts_cpu_threads: int = Field(
        default=1, ge=0, description="onnxruntime threads for one Piper synthesis (0 = all).")

    # --- speech service (speech servers host the models; every other process is a client)
    speech_servers: str = Field(
        default="",
        description="Comma list of speech servers the node's processes use "
        "(ipc:///path/speech.sock or tcp://host:port); empty: `switchboard run` starts "
        "speech_server_count local ones, one-off commands (simulate, call, benches) start one "
        "for their run.",
    )
    speech_server_count: int = Field(
        default=1, ge=1, description="Local speech servers `switchboard run` starts."
    )
    speech_bind: str = Field(
        default="",
        description="Address `switchboard speech-server` serves on when --bind is not given; "
        "empty: an ipc socket in data_dir/run. tcp://0.0.0.0:7100 serves other hosts (needs "
        "speech_secret).",
    )
    speech_secret: str = Field(
        default="",
        description="Shared secret of the speech servers and their clients: traffic is "
        "encrypted (CURVE) and only holders of the secret are served. Required for a server "
        "bound to a non-loopback address.",
    )
    speech_request_timeout_s: float = Field(
        default=5.0, gt=0,
        description="A speech request unanswered this long is cancelled and asked of another "
        "live server, if there is one.",
    )
    speech_dead_after_s: float = Field(
        default=1.5, gt=0,
        description="A speech server silent to pings this long is treated as dead.",
    )

    # --- turn taking -------------------------------------------------------------------
    vad_threshold: float = Field(default=0.5, gt=0, lt=1, description="Speech probability.")
    speech_start_ms: int = Field(
        default=64, ge=20, description="Speech needed before a caller turn (and barge-in) starts."
    )
    end_of_turn_ms: int = Field(
        default=450, ge=100, description="Silence after speech that ends the caller's turn."
    )
    early_transcribe_ms: int = Field(
        default=120,
        ge=0,
        description="Silence after which transcription starts speculatively (0 = off); "
        "the result is used if the caller stays silent until end of turn.",
    )
    min_utterance_ms: int = Field(
        default=200, ge=0, description="Shorter bursts of speech are ignored as noise."
    )
    max_utterance_s: float = Field(
        default=30.0, gt=1, description="A caller turn is cut and handled after this long."
    )
    barge_in: bool = Field(default=True, description="Caller speech stops bot playback.")
    no_input_timeout_s: float = Field(
        default=8.0, gt=0, description="Silence after the bot spoke before a reprompt."
    )
    max_reprompts: int = Field(
        default=1, ge=0, description="Reprompts before the bot says goodbye and hangs up."
    )
    max_call_s: float = Field(default=1800.0, gt=0, description="Longest call before hangup.")
    dtmf_timeout_s: float = Field(
        default=3.0, gt=0, description="Pause that ends a keypad entry (or '#')."
    )
    apology_text: str = Field(
        default="Sorry, I'm having technical trouble right now. Please call again later. Goodbye.",
        description="Spoken when the dialog engine cannot be reached.",
    )
    empty_reply_text: str = Field(
        default="Sorry, I couldn't do that just now. Could you try again?",
        description="Spoken when the dialog answers a turn with nothing to say (a custom "
        "action failed, say, with its action server down): the caller never hears silence.",
    )

    # --- dialog (Rasa) -----------------------------------------------------------------
    rasa_url: str = Field(
        default="http://127.0.0.1:5005",
        description="Rasa server the pipeline talks to; a comma list names redundant "
        "servers sharing their trackers in Redis (one that fails is passed over, the "
        "conversation goes on at another).",
    )
    rasa_api_token: str = Field(
        default="",
        description="Token of Rasa's HTTP API, used to read each turn's intent; "
        "`switchboard run` makes one when empty.",
    )
    rasa_managed: bool = Field(
        default=True,
        description="`switchboard run` starts a Rasa server and action server of its own; "
        "false: the node uses the one at rasa_url (a dialog tier shared by several nodes, "
        "its trackers in Redis).")
    rasa_port: int = Field(default=5005, description="Port of the managed Rasa server.")
    rasa_interface: str = Field(
        default="127.0.0.1",
        description="Address the managed Rasa server (or `switchboard dialog serve`) listens "
        "on; 0.0.0.0 to serve other nodes (keep SWITCHBOARD_RASA_API_TOKEN set).")
    action_port: int = Field(default=5055, description="Port of the managed action server.")
    rasa_timeout_s: float = Field(default=10.0, gt=0, description="Timeout of one Rasa request.")
    rasa_start_timeout_s: float = Field(
        default=180.0, gt=0, description="How long to wait for Rasa to become healthy."
    )
    rasa_venv: Path = Field(
        default=PROJECT_ROOT / ".venv-rasa", description="Virtualenv holding Rasa 3.6."
    )

    # --- telephony: SIP -----------------------------------------------------------------
    sip_host: str = Field(default="127.0.0.1", description="Address SIP listens on.")
    sip_port: int = Field(
        default=5060, description="SIP port callers use (Kamailio's when sip_workers > 1)."
    )
    sip_public_address: str = Field(
        default="",
        description="Address callers reach this node at when it sits behind NAT (a container, "
        "a cloud VM): written in Contact and Via (by Kamailio, with several workers) "
        "instead of sip_host. Answers go to where requests come from (rport).",
    )
    sip_media_address: str = Field(
        default="",
        description="Address written in the SDP (c=, o=) behind NAT; empty: "
        "sip_public_address. Media goes back to where each caller's RTP comes from "
        "(symmetric RTP), whatever address the caller's SDP names.",
    )
    sip_transports: str = Field(
        default="udp,tcp", description="Comma list of udp, tcp, tls (tls needs a certificate)."
    )
    sip_tls_port: int = Field(default=5061, description="SIP over TLS port.")
    sip_tls_cert: Path | None = Field(default=None, description="PEM certificate for SIP TLS.")
    sip_tls_key: Path | None = Field(default=None, description="PEM private key for SIP TLS.")
    sip_srtp: Literal["off", "optional", "mandatory"] = Field(
        default="optional",
        description="SRTP on SIP calls (SDES keys, RTP/SAVP): optional uses it when the other "
        "party offers or accepts it, over any transport; mandatory answers a call offering "
        "plain RTP with 488 and places calls only with SRTP.",
    )
    sip_srtp_needs_tls: bool = Field(
        default=True,
        description="With mandatory SRTP, exchange its keys (they travel in the SDP) only "
        "over SIP TLS; false where a proxy on this host ends TLS (the node's Kamailio sets it "
        "for its workers).",
    )
    sip_codecs: str = Field(
        default="PCMU,PCMA,G722",
        description="Codecs offered, highest priority first (PCMU, PCMA, G722).",
    )
    sip_max_calls: int = Field(
        default=4, ge=1, le=4, description="Calls per SIP worker (PJSUA2 allows 4)."
    )
    sip_workers: int = Field(default=1, ge=1, description="SIP media worker processes.")
    sip_worker_base_port: int = Field(
        default=5070, description="First SIP port of the workers behind Kamailio (step 2)."
    )
    sip_rtp_port: int = Field(default=40000, description="First RTP port of the first worker.")
    sip_rtp_timeout_s: float = Field(
        default=10.0, gt=0, description="A call whose RTP stops this long is ended."
    )
    sip_ring_timeout_s: float = Field(
        default=60.0, gt=0, le=600,
        description="An outbound call (`switchboard call`, a callback to a cut-off caller) "
        "that is not answered this long is cancelled.")
    sip_allowed_networks: str = Field(
        default="",
        description="Comma list of CIDRs allowed to call in; empty allows any source.",
    )
    sip_auth_username: str = Field(
        default="",
        description="Digest user a caller (a trunk) must authenticate as on INVITE unless its "
        "address is in sip_allowed_networks; empty: no authentication.",
    )
    sip_auth_password: str = Field(default="", description="That caller's digest password.")
    sip_auth_realm: str = Field(default="switchboard", description="Realm of that challenge.")
    sip_trusted_networks: str = Field(
        default="127.0.0.1,::1",
        description="Comma list of CIDRs exempt from the per-source limits below (a proxy "
        "in front; sip_allowed_networks, the trunks, are exempt too).",
    )
    sip_source_call_rate: str = Field(
        default="10/minute",
        description="New calls one source address may start in a moving window (10/minute, "
        "2/second; empty: no limit; Kamailio in front counts in fixed windows); more are "
        "answered 503 with Retry-After.",
    )
    sip_source_max_calls: int = Field(
        default=2, ge=0,
        description="Calls at once from one source address (0: no limit); more are answered "
        "503, so a flood from one address leaves lines for other callers.",
    )
    sip_flood_requests: int = Field(
        default=32, ge=1,
        description="With Kamailio in front: SIP requests one untrusted source may send in 2 s "
        "before Kamailio drops its traffic (pike) until it slows down.",
    )
    sip_registrar: str = Field(
        default="", description="Registrar URI to register with (e.g. sip:pbx.example.com)."
    )
    sip_username: str = Field(
        default="", description="Digest user for registration and calls placed (the AOR's user)."
    )
    sip_password: str = Field(default="", description="Digest password.")
    sip_realm: str = Field(default="*", description="Digest realm.")
    sip_register_expiry_s: int = Field(
        default=300, ge=10,
        description="Registration lifetime asked of the registrar; renewed before it ends.",
    )
    sip_register_retry_s: int = Field(
        default=30, ge=1, description="Wait before registering again after a failure."
    )
    sip_transfer_uri: str = Field(
        default="", description="Where a handoff is transferred (REFER), e.g. sip:agents@pbx."
    )
    sip_record: bool = Field(default=True, description="Record every SIP call (both legs).")
    sip_jitter_buffer_ms: int = Field(
        default=-1, ge=-1, le=1000,
        description="Initial and minimum prefetch of the RTP jitter buffer, in ms; -1 keeps "
        "PJMEDIA's adaptive defaults.")

    # --- web app and WebRTC softphone ---------------------------------------------------
    web_host: str = Field(
        default="127.0.0.1", description="Address the web app (softphone, API) listens on."
    )
    web_port: int = Field(default=8000, description="Port of the web app.")
    web_public_url: str = Field(
        default="",
        description="The web app's address as browsers reach it (e.g. "
        "https://node-a.example.com); a softphone whose node is lost reconnects to another "
        "node's. Default: http(s)://web_host:web_port.")
    web_tls_cert: Path | None = Field(
        default=None,
        description="PEM certificate: serve HTTPS (browsers need it for the microphone "
        "anywhere but localhost).",
    )
    web_tls_key: Path | None = Field(default=None, description="PEM private key for HTTPS.")
    webrtc_ice_addresses: str = Field(
        default="",
        description="Comma list of local addresses offered as ICE host candidates; empty "
        "offers every address of this machine except loopback ('127.0.0.1' offers only it).",
    )
    webrtc_stun_servers: str = Field(
        default="",
        description="Comma list of STUN URLs (stun:host:port); empty contacts no STUN server.",
    )
    webrtc_turn_servers: str = Field(
        default="", description="Comma list of TURN URLs (turn:host:port?transport=udp)."
    )
    webrtc_turn_username: str = Field(default="", description="TURN user name.")
    webrtc_turn_password: str = Field(default="", description="TURN password.")
    webrtc_max_calls: int = Field(
        default=20, ge=1, description="Browser calls at once; more offers get 503."
    )
    webrtc_media_timeout_s: float = Field(
        default=5.0, gt=0, description="A browser call whose audio stops this long ends."
    )
    webrtc_reconnect_window_s: float = Field(
        default=60.0,
        ge=0,
        description="A dropped browser call reconnecting within this time continues "
        "its conversation (no new greeting).",
    )

    # --- agents' desk (needs redis_url) ------------------------------------------------
    desk_enabled: bool = Field(
        default=True, description="With Redis: a handoff waits in the agents' queue (hold "
        "music, position) until an agent takes the call in the console, instead of an "
        "immediate transfer.")
    desk_queue_timeout_s: float = Field(
        default=120.0, ge=0, le=3600,
        description="How long a caller waits for an agent before the fallback.")
    desk_fallback: Literal["transfer", "bot"] = Field(
        default="transfer", description="After the wait: transfer to sip_transfer_uri (SIP "
        "calls with a target; others go back to the bot) or back to the bot.")
    desk_announce_every_s: float = Field(
        default=30.0, gt=0, description="How often a waiting caller hears their position.")
    desk_connect_timeout_s: float = Field(
        default=20.0, gt=0, le=120,
        description="How long an agent who took a call has to connect their audio.")
    desk_hold_music: str = Field(
        default="", description="Hold music file (WAV, MP3, Ogg…, looped); empty: a "
        "built-in tune.")

    # --- admin console ------------------------------------------------------------------
    softphone_offer_rate: str = Field(
        default="10/minute",
        description="Browser calls one address may start in a moving window (empty: no "
        "limit); more offers get 429 with Retry-After.",
    )
    softphone_calls_per_address: int = Field(
        default=2, ge=0, description="Browser calls at once from one address (0: no limit)."
    )
    softphone_trusted_networks: str = Field(
        default="127.0.0.1,::1",
        description="Comma list of CIDRs exempt from the softphone's per-address limits (a "
        "reverse proxy in front must forward the caller's address instead).",
    )
    softphone_public: bool = Field(
        default=True,
        description="Anyone may call the bot from /softphone, like dialling its number; "
        "false puts the softphone behind the console sign-in.",
    )
    console_secure_cookies: bool = Field(
        default=True,
        description="Mark the console's session cookie Secure (sent only over HTTPS; browsers "
        "also accept it from http://localhost and 127.0.0.1). Turn off only on a trusted "
        "network without TLS.",
    )
    console_session_hours: float = Field(
        default=12.0, gt=0, description="A console sign-in lasts this long."
    )
    console_login_max_failures: int = Field(
        default=5,
        ge=1,
        description="Failed sign-ins for one user name within the window before sign-in is "
        "refused for it (an address gets four times as many).",
    )
    console_login_window_minutes: float = Field(
        default=15.0, gt=0, description="Window of the failed sign-in limit."
    )

    # --- post-call analytics (Celery) --------------------------------------------------
    celery_broker_url: str = Field(
        default="",
        description="Celery broker; empty means a SQLite file in data_dir (kombu's SQLAlchemy "
        "transport, no server). Production: redis://host:6379/1",
    )
    celery_result_backend: str = Field(
        default="",
        description="Celery result backend; empty keeps no task results (analyses are "
        "stored in the database either way).",
    )
    celery_visibility_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="Redis broker: a task taken by a worker that died is delivered again "
        "after this long (keep it above the longest analysis).",
    )
    celery_enqueue_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description="How long queueing a call's analysis waits for an unreachable or silent "
        "broker before it logs and gives up (at least 2 s with Redis).",
    )
    celery_max_retries: int = Field(
        default=5, ge=0, description="Retries of an analysis that failed on a database error."
    )
    celery_retry_backoff_max_s: int = Field(
        default=300, ge=1, description="Cap of the exponential backoff between retries."
    )
    celery_worker_pool: Literal["prefork", "solo", "threads"] = Field(
        default="prefork", description="Pool of the analytics worker (prefork survives a "
        "crashing task: the task is delivered again)."
    )
    celery_worker_concurrency: int = Field(
        default=1, ge=1, description="Analyses the worker runs at once."
    )
    analytics_sweep_after_s: float = Field(
        default=900.0,
        gt=0,
        description="A call ended at least this long ago without an analysis is queued again "
        "when a worker starts and this often while it runs (covers tasks lost with a broker "
        "or a killed worker, and calls that ended while the broker was down).",
    )
    stale_call_hours: float = Field(
        default=12.0, gt=0,
        description="A call still marked active this long after it started lost its end (a "
        "process that died unsupervised): the analytics worker ends it (reason lost).",
    )
    retention_recordings_days: float = Field(
        default=0.0, ge=0,
        description="Recordings of calls that started more than this many days ago are "
        "deleted (the analytics worker checks every retention_check_minutes); 0 keeps them.",
    )
    retention_transcripts_days: float = Field(
        default=0.0, ge=0,
        description="The words of calls that started more than this many days ago (turns, "
        "the analysis' transcript and summary) are deleted; timings, intents and outcomes "
        "stay. 0 keeps them.",
    )
    retention_check_minutes: float = Field(
        default=60.0, gt=0, description="How often the retention policy is applied."
    )
    analytics_test_delay_s: float = Field(
        default=0.0,
        ge=0,
        description="Test hook: every analysis sleeps this long before it is stored (to "
        "kill a worker mid-task in tests). Keep 0.",
    )

    @field_validator("data_dir", "rasa_venv")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def effective_node_id(self) -> str:
        """``node_id``, or the host name."""
        return self.node_id or socket.gethostname()

    @property
    def effective_web_url(self) -> str:
        """``web_public_url``, or the address the web app listens on."""
        if self.web_public_url:
            return self.web_public_url.rstrip("/")
        scheme = "https" if self.web_tls_cert else "http"
        host = socket.gethostname() if self.web_host in ("0.0.0.0", "::") else self.web_host
        return f"{scheme}://{host}:{self.web_port}"

    @property
    def effective_database_url(self) -> str:
        """The configured URL, or the default SQLite file inside ``data_dir``."""
        return self.database_url or f"sqlite:///{self.data_dir / 'switchboard.db'}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()


def settings_table() -> str:
    """The README's table of settings, generated from the fields above."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, info in Settings.model_fields.items():
        default = info.default
        if isinstance(default, Path):
            default = default.relative_to(PROJECT_ROOT) if default.is_relative_to(
                PROJECT_ROOT) else default
        shown = f"`{default}`" if default not in ("", None) else "(empty)"
        rows.append(f"| `SWITCHBOARD_{name.upper()}` | {shown} | {info.description or ''} |")
    return "\n".join(rows)
