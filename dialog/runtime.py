"""Train, start, watch and stop the Rasa server and its action server.

Rasa 3.6 lives in its own virtualenv (``RasaConfig.venv``, Python 3.10): this module
only runs its executables as child processes and never imports Rasa. Models are cached by
a hash of the training inputs, so Rasa retrains only when the bot itself changes.
"""

from __future__ import annotations

import codecs
import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlsplit

from dialog.config import RasaConfig
from switchboard.base.children import (
    ChildProcess,
    Managed,
    http_probe,
    last_lines,
    wait_all_healthy,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BOT_DIR = PROJECT_ROOT / "dialog" / "bot"
TRAINING_INPUTS = ("config.yml", "domain.yml", "data")
INSTALL_SCRIPT = PROJECT_ROOT / "scripts" / "install-rasa-venv.sh"
LOOPBACK = "127.0.0.1"
WILDCARDS = ("0.0.0.0", "::")
LOG_TAIL_LINES = 40
TAIL_BYTES = 16_384
CHUNK_BYTES = 4096
STOP_GRACE_S = 10.0
TRACKER_RECORD_EXPIRY_S = 24 * 3600
CHILD_ENV = {
    "RASA_TELEMETRY_ENABLED": "false",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "SQLALCHEMY_SILENCE_UBER_WARNING": "1",
    "PYTHONUNBUFFERED": "1",
}


class RasaError(RuntimeError):
    """Base class of the errors raised while training or running Rasa."""


class RasaNotInstalled(RasaError):
    """The Rasa virtualenv is missing or incomplete."""


class RasaTrainingError(RasaError):
    """``rasa train`` failed."""


class RasaStartError(RasaError):
    """The Rasa server or the action server did not come up (or died)."""


def bot_hash(bot_dir: Path = BOT_DIR) -> str:
    """Content hash of the files that affect training (config, domain, data/**)."""
    digest = hashlib.sha256()
    for name in TRAINING_INPUTS:
        root = bot_dir / name
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            digest.update(path.relative_to(bot_dir).as_posix().encode())
            digest.update(b"\0")
            digest.update(path.read_bytes())
            digest.update(b"\0")
    return digest.hexdigest()[:16]


def models_dir(config: RasaConfig) -> Path:
    """Where trained models are cached, one ``<bot_hash>.tar.gz`` per bot version."""
    return _models_below(config.data_dir)


def _models_below(data_dir: Path) -> Path:
    return data_dir / "rasa" / "models"


def share_trained_model(source_data_dir: Path, data_dir: Path, bot_dir: Path = BOT_DIR) -> bool:
    """Put the bot's model trained in ``source_data_dir`` into ``data_dir``'s cache too (a
    hard link, else a copy), so that a node started on a new data folder trains nothing
    (a minute on two cores). False when the source has no model for this bot."""
    name = f"{bot_hash(bot_dir)}.tar.gz"
    source, target = _models_below(source_data_dir) / name, _models_below(data_dir) / name
    if target.exists():
        return True
    if not source.exists():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    return True


def logs_dir(config: RasaConfig) -> Path:
    """Where the Rasa children write their logs."""
    return config.data_dir / "logs"


def rasa_executable(config: RasaConfig, name: str = "rasa") -> Path:
    """``<rasa_venv>/bin/<name>``, or :class:`RasaNotInstalled` with what to do."""
    path = config.venv / "bin" / name
    if not os.access(path, os.X_OK):
        raise RasaNotInstalled(
            f"Rasa is not installed: {path} is missing. Run `make run` (it installs Rasa on "
            f"first use) or `{INSTALL_SCRIPT.relative_to(PROJECT_ROOT)} {config.venv}`, "
            "or point SWITCHBOARD_RASA_VENV at an existing Rasa 3.6 virtualenv."
        )
    return path


def child_environment(config: RasaConfig, **extra: str) -> dict[str, str]:
    """Environment of a Rasa child: this one minus the app's Python paths, plus Rasa's."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["VIRTUAL_ENV"] = str(config.venv)
    env["PATH"] = f"{config.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["RASA_CACHE_DIRECTORY"] = str(config.data_dir / "rasa" / "cache")
    env.update(CHILD_ENV)
    env.update(extra)
    return env


def ensure_trained(
    config: RasaConfig, *, force: bool = False, bot_dir: Path = BOT_DIR, echo: IO[str] | None = None
) -> Path:
    """The model for the bot as it is now, trained first if it is not cached yet.

    Rasa's progress is streamed to ``echo`` (default: stderr) and kept in
    ``data_dir/logs/rasa-train.log``. Concurrent callers wait for one training.
    """
    model = models_dir(config) / f"{bot_hash(bot_dir)}.tar.gz"
    if model.exists() and not force:
        return model
    rasa = rasa_executable(config)
    model.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(model.parent / ".train.lock"):
        if model.exists() and not force:
            return model  # trained by another process while we waited
        with tempfile.TemporaryDirectory(dir=model.parent, prefix=".training-") as out:
            _run_training(config, rasa, bot_dir, Path(out), model, echo or sys.stderr)
            os.replace(Path(out) / model.name, model)
    return model


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_training(
    config: RasaConfig, rasa: Path, bot_dir: Path, out: Path, model: Path, echo: IO[str]
) -> None:
    log_path = logs_dir(config) / "rasa-train.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        str(rasa), "train",
        "--config", str(bot_dir / "config.yml"),
        "--domain", str(bot_dir / "domain.yml"),
        "--data", str(bot_dir / "data"),
        "--out", str(out),
        "--fixed-model-name", model.name.removesuffix(".tar.gz"),
    ]  # fmt: skip
    echo.write(f"Training the Rasa model {model.name} (log: {log_path}) ...\n")
    echo.flush()
    started = time.monotonic()
    tail = bytearray()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with (
        log_path.open("wb") as log,
        subprocess.Popen(
            command,
            cwd=bot_dir,
            env=child_environment(config),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        ) as process,
    ):
        assert process.stdout is not None
        while chunk := os.read(process.stdout.fileno(), CHUNK_BYTES):
            log.write(chunk)
            echo.write(decoder.decode(chunk))  # keeps the \r of progress bars
            echo.flush()
            tail = (tail + chunk)[-TAIL_BYTES:]
        returncode = process.wait()
    if returncode != 0 or not (out / model.name).exists():
        raise RasaTrainingError(
            f"`rasa train` failed (exit code {returncode}); full log: {log_path}. "
            "Check dialog/bot/ (run `rasa data validate` there). Last lines:\n"
            + last_lines(tail.decode(errors="replace"), LOG_TAIL_LINES)
        )
    echo.write(f"Trained {model.name} in {time.monotonic() - started:.0f} s.\n")
    echo.flush()


def endpoints_yaml(config: RasaConfig, action_port: int) -> str:
    """endpoints.yml: our action server, and Redis trackers when ``redis_url`` is set."""
    lines = ["action_endpoint:", f'  url: "http://{LOOPBACK}:{action_port}/webhook"']
    if config.redis_url:
        url = urlsplit(config.redis_url)
        connection = [
            f'  url: "{url.hostname or "localhost"}"',
            f"  port: {url.port or 6379}",
            f"  db: {int(url.path.lstrip('/') or 0)}",
            f"  use_ssl: {'true' if url.scheme == 'rediss' else 'false'}",
            '  key_prefix: "switchboard"',
        ]
        if url.password:
            connection.append(f'  password: "{unquote(url.password)}"')
        # Rasa servers sharing the trackers also share the lock store: one conversation's
        # messages are handled one at a time whichever server gets them.
        lines += ["tracker_store:", "  type: redis", *connection,
                  f"  record_exp: {TRACKER_RECORD_EXPIRY_S}",
                  "lock_store:", "  type: redis", *connection]
    return "\n".join(lines) + "\n"


class RasaServers(Managed):
    """The Rasa server and the action server as child processes bound to 127.0.0.1.

    ``with RasaServers(config, model) as servers:`` starts both, waits until they are
    healthy and stops them on exit. Only this object's own children are ever signalled.
    """

    name = "dialog servers"

    def __init__(
        self,
        config: RasaConfig,
        model: Path,
        *,
        rasa_port: int | None = None,
        action_port: int | None = None,
        database_url: str | None = None,
        bot_dir: Path = BOT_DIR,
    ) -> None:
        self.config = config
        self.model = model
        self.rasa_port = rasa_port or config.rasa_port
        self.action_port = action_port or config.action_port
        self.database_url = database_url or config.database_url
        self.bot_dir = bot_dir
        self.rasa_log = logs_dir(config) / "rasa.log"
        self.action_log = logs_dir(config) / "rasa-actions.log"
        self._children: list[ChildProcess] = []

    @property
    def url(self) -> str:
        """Base URL of the Rasa server."""
        interface = self.config.interface
        host = LOOPBACK if interface in WILDCARDS else interface
        return f"http://{host}:{self.rasa_port}"

    @property
    def action_url(self) -> str:
        """Base URL of the action server."""
        return f"http://{LOOPBACK}:{self.action_port}"

    def start(self) -> None:
        """Start both children (returns at once; see :meth:`wait_healthy`)."""
        if self._children:
            raise RasaStartError("Rasa servers already started; call stop() first.")
        rasa = rasa_executable(self.config)
        python = rasa_executable(self.config, "python")
        if not self.model.exists():
            raise RasaStartError(f"Rasa model {self.model} does not exist; train it first.")
        endpoints = self.config.data_dir / "rasa" / f"endpoints-{self.rasa_port}.yml"
        endpoints.parent.mkdir(parents=True, exist_ok=True)
        endpoints.write_text(endpoints_yaml(self.config, self.action_port))
        self._children = [
            self._child(
                "action server",
                [str(python), "-m", "rasa_sdk", "--actions", "actions",
                 "-p", str(self.action_port)],
                self.action_log,
                f"{self.action_url}/health",
                SANIC_HOST=LOOPBACK,
                SWITCHBOARD_DATABASE_URL=self.database_url,
            ),
            self._child(
                "Rasa server",
                [
                    str(rasa), "run", "--model", str(self.model),
                    "--interface", self.config.interface, "--port", str(self.rasa_port),
                    "--endpoints", str(endpoints),
                    "--credentials", str(self.bot_dir / "credentials.yml"),
                    *(["--enable-api", f"--auth-token={self.config.api_token}"]
                      if self.config.api_token else []),
                ],
                self.rasa_log,
                f"{self.url}/",
            ),
        ]  # fmt: skip
        for child in self._children:
            child.start()

    def _child(
        self, name: str, command: list[str], log_path: Path, health_url: str, **env: str
    ) -> ChildProcess:
        return ChildProcess(
            name, command, log_path=log_path, healthy=http_probe(health_url, timeout_s=2.0),
            base_env=child_environment(self.config, **env), cwd=self.bot_dir,
            start_timeout_s=self.config.start_timeout_s, error=RasaStartError,
            timeout_hint="Raise SWITCHBOARD_RASA_START_TIMEOUT_S on a slow machine.",
        )

    def exited(self) -> dict[str, int]:
        """Children that have exited, with their exit codes; empty while all run."""
        codes = {child.name: child.poll() for child in self._children}
        return {name: code for name, code in codes.items() if code is not None}

    def poll(self) -> int | None:
        """The exit code of the first child that exited; None while both run."""
        return next(iter(self.exited().values()), None)

    def wait_healthy(self, timeout: float | None = None) -> float:
        """Block until Rasa (GET /) and the action server (GET /health) answer.

        Returns the seconds waited. Raises :class:`RasaStartError` with the log tail when
        a child exits or ``timeout`` (default ``config.start_timeout_s``) passes.
        """
        if not self._children:
            raise RasaStartError("Rasa servers are not started; call start() first.")
        limit = self.config.start_timeout_s if timeout is None else timeout
        return wait_all_healthy(self._children, limit)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM both children, SIGKILL whichever still runs after ``grace_s``."""
        for child in self._children:
            child.stop(grace_s)
        self._children = []
