"""Schemathesis against the REST API of a real `switchboard web`, with an admin's token and
every check (status codes and content types the OpenAPI document declares, responses that
fit their schema, schema-valid requests accepted and schema-violating ones refused, 405s
with Allow, stateful sequences, requests without the token): no failure, no server error.
The seed is fixed so a failure reproduces; the examples are bounded."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import soundfile

from analytics.analysis import analyze
from switchboard.base.children import ChildProcess, http_probe
from switchboard.base.processes import free_port
from switchboard.base.settings import PROJECT_ROOT
from switchboard.storage.database import prepare_database
from switchboard.storage.repository import AnalysisRepository, CallRepository
from tests.analytics.calls import order_call, store_call

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("speech_server")]

SCHEMATHESIS = Path(sys.executable).with_name("st")
EXAMPLES = 100
SEED = "20261130"


def test_schemathesis_finds_nothing_wrong_with_the_api(
    tmp_path: Path, artifacts: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "SWITCHBOARD_DATA_DIR": str(tmp_path),
        "SWITCHBOARD_DATABASE_URL": f"sqlite:///{tmp_path / 'api.db'}",
        "SWITCHBOARD_DEMO_DATA": "true",  # calls, analyses and orders to read
        "SWITCHBOARD_WEB_HOST": "127.0.0.1",
        "SWITCHBOARD_WEB_PORT": str(port),
        "SWITCHBOARD_RASA_URL": "http://127.0.0.1:9",  # the API needs no dialog
    }

    def switchboard(*args: str, stdin: str = "") -> str:
        done = subprocess.run([sys.executable, "-m", "switchboard", *args], env=env,
                              cwd=PROJECT_ROOT, input=stdin, capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    switchboard("users", "create", "fuzz-admin", "--role", "admin", "--password-stdin",
                stdin="fuzzing admin password\n")
    token = switchboard("users", "token", "fuzz-admin", "--name", "schemathesis").split()[-1]
    assert token.startswith("sbt_")
    # one analysed call with a recording, for the call and recording operations
    sessions = prepare_database(env["SWITCHBOARD_DATABASE_URL"], demo_data=False)
    call_id = store_call(sessions, order_call(datetime.now(UTC) - timedelta(hours=1)))
    calls = CallRepository(sessions)
    recording = tmp_path / "recording.wav"
    soundfile.write(str(recording), np.zeros((8000, 2), dtype=np.int16), 8000)
    calls.set_recording(call_id, str(recording))
    stored = calls.get_call(call_id)
    assert stored is not None
    AnalysisRepository(sessions).save(analyze(stored).as_row())
    config = tmp_path / "schemathesis.toml"
    config.write_text(f'[parameters]\n"path.call_id" = "{call_id}"\n')
    log = artifacts / "api-fuzz-web-app.log"
    with ChildProcess("web app", [sys.executable, "-m", "switchboard", "web"], log_path=log,
                      healthy=http_probe(f"http://127.0.0.1:{port}/healthz"), base_env=env,
                      cwd=PROJECT_ROOT, start_timeout_s=90.0) as web:
        run = subprocess.run(
            [str(SCHEMATHESIS), "--config-file", str(config), "run",
             f"http://127.0.0.1:{port}/api/openapi.json",
             "--checks", "all", "--mode", "all", "-H", f"Authorization: Bearer {token}",
             "--max-examples", str(EXAMPLES), "--seed", SEED, "--no-color"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
        report = artifacts / "api-fuzz-report.txt"
        report.write_text(run.stdout + run.stderr)
        assert run.returncode == 0, f"schemathesis found failures; see {report}:\n" \
                                    f"{run.stdout[-4000:]}"
        counted = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
        assert counted and counted.group(1) == counted.group(2), run.stdout[-2000:]
        assert int(counted.group(1)) > 1000  # every operation, every phase
        assert "Missing test data" not in run.stdout
        assert web.poll() is None
    assert "Traceback" not in log.read_text(errors="replace")
