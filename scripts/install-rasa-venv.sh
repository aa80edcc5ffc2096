#!/usr/bin/env bash
# Install Rasa 3.6 (dialog engine + action server) into its own virtualenv.
#
#   scripts/install-rasa-venv.sh VENV_DIR
#
# Rasa 3.6 declares Python < 3.11 and pins SQLAlchemy < 1.5 and TensorFlow 2.12, so it
# cannot share the app's virtualenv. Preferred interpreter: Python 3.10 (python3.10 on
# PATH, or pyenv's 3.10.x), where a plain install of dialog/requirements-rasa.txt works.
# Otherwise Python 3.11 gets a two-step install: Rasa's dependencies resolved as for
# 3.10 (with the pins below), then Rasa itself with --no-deps --ignore-requires-python.
#
# Idempotent: a stamp file in VENV_DIR records the hash of the requirements and the
# install mode; a second run with nothing changed returns at once. An existing VENV_DIR
# is reused as it is (its interpreter decides the mode), never recreated.
# RASA_PYTHON=/path/to/python3.x picks the interpreter for a new VENV_DIR.
set -euo pipefail

VENV_DIR=${1:?usage: $0 VENV_DIR}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REQUIREMENTS="$ROOT/dialog/requirements-rasa.txt"
STAMP="$VENV_DIR/.switchboard-rasa-stamp"
RASA_PINS=(rasa==3.6.21 rasa-sdk==3.6.2)
# Rasa 3.6's dependencies as resolved on Python 3.10, where pip on 3.11 would pick others;
# they replace Rasa's own requirement for the same package (matplotlib < 3.6 has no 3.11
# wheels, 3.6 works with Rasa).
PY311_PINS=(numpy==1.23.5 scipy==1.10.1 scikit-learn==1.1.3 dask==2022.10.2 "matplotlib>=3.6,<3.7")

say() { printf '[install-rasa-venv] %s\n' "$*"; }
die() { say "ERROR: $*" >&2; exit 1; }

works() { "$1" -c 'import sys' >/dev/null 2>&1; }
py_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }

find_python() {
    if [ -n "${RASA_PYTHON:-}" ]; then
        works "$RASA_PYTHON" || die "RASA_PYTHON=$RASA_PYTHON does not run."
        command -v "$RASA_PYTHON"; return
    fi
    if works python3.10; then command -v python3.10; return; fi
    if command -v pyenv >/dev/null 2>&1; then
        local candidate
        for candidate in $(ls -d "$(pyenv root)"/versions/3.10.*/bin/python 2>/dev/null | sort -V -r); do
            if works "$candidate"; then echo "$candidate"; return; fi
        done
    fi
    local name
    for name in python3.11 python3; do
        if works "$name" && [ "$(py_version "$name")" = "3.11" ]; then command -v "$name"; return; fi
    done
    return 1
}

if [ -x "$VENV_DIR/bin/python" ]; then
    PYTHON="$VENV_DIR/bin/python"
    say "Reusing the virtualenv $VENV_DIR (Python $(py_version "$PYTHON"))."
else
    BASE_PYTHON=$(find_python) || die "Rasa 3.6 needs Python 3.10 (preferred) or 3.11, and none \
was found. Install one (e.g. 'pyenv install 3.10') and run this script again."
    say "Creating $VENV_DIR with $BASE_PYTHON (Python $(py_version "$BASE_PYTHON"))."
    "$BASE_PYTHON" -m venv "$VENV_DIR"
    PYTHON="$VENV_DIR/bin/python"
fi

VERSION=$(py_version "$PYTHON")
case "$VERSION" in
    3.8|3.9|3.10) MODE=plain ;;
    3.11) MODE=two-step ;;
    *) die "$VENV_DIR has Python $VERSION; Rasa 3.6 runs on 3.10 (or 3.11 with a two-step \
install). Remove $VENV_DIR and run this script again." ;;
esac

WANTED=$( { echo "$MODE"; cat "$REQUIREMENTS"; [ "$MODE" = plain ] || printf '%s\n' "${PY311_PINS[@]}"; } \
    | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANTED" ] && [ -x "$VENV_DIR/bin/rasa" ]; then
    say "Rasa is up to date in $VENV_DIR."
    exit 0
fi

PIP=("$PYTHON" -m pip --disable-pip-version-check)
say "Upgrading pip ..."
"${PIP[@]}" install --upgrade pip wheel

if [ "$MODE" = plain ]; then
    say "Installing $REQUIREMENTS (first time: about 2 minutes, 2.7 GB) ..."
    "${PIP[@]}" install -r "$REQUIREMENTS"
else
    say "Python 3.11: step 1/2, Rasa's dependencies as resolved for Python 3.10 ..."
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
    "${PIP[@]}" install packaging
    "${PIP[@]}" download --no-deps --ignore-requires-python --only-binary=:all: \
        -d "$WORK" "${RASA_PINS[@]}"
    "$PYTHON" - "${PY311_PINS[*]}" "$WORK"/*.whl > "$WORK/dependencies.txt" <<'PY'
import sys
import zipfile

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

AS_PY310 = {"python_version": "3.10", "python_full_version": "3.10.13", "extra": ""}
# pinned packages come from the pins; rasa and rasa-sdk from step 2
skip = {canonicalize_name(Requirement(pin).name) for pin in sys.argv[1].split()}
skip |= {"rasa", "rasa-sdk"}
for wheel in sys.argv[2:]:
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        for line in archive.read(metadata).decode().splitlines():
            if line.startswith("Requires-Dist:"):
                requirement = Requirement(line.split(":", 1)[1].strip())
                if canonicalize_name(requirement.name) in skip:
                    continue
                if requirement.marker is None or requirement.marker.evaluate(AS_PY310):
                    requirement.marker = None
                    print(requirement)
PY
    grep -v -E '^(rasa|rasa-sdk|rasa_sdk)[^a-z_-]' "$REQUIREMENTS" | grep -v -E '^\s*(#|$)' \
        >> "$WORK/dependencies.txt" || true
    say "$(wc -l < "$WORK/dependencies.txt") requirements, pinned: ${PY311_PINS[*]}"
    "${PIP[@]}" install -r "$WORK/dependencies.txt" "${PY311_PINS[@]}"
    say "Python 3.11: step 2/2, Rasa itself (--no-deps --ignore-requires-python) ..."
    "${PIP[@]}" install --no-deps --ignore-requires-python "${RASA_PINS[@]}"
fi

say "Checking the installation ..."
RASA_TELEMETRY_ENABLED=false "$PYTHON" -c 'import rasa, rasa_sdk, sqlalchemy, psycopg2; print("rasa", rasa.__version__, "rasa_sdk", rasa_sdk.__version__, "sqlalchemy", sqlalchemy.__version__)'
echo "$WANTED" > "$STAMP"
say "Rasa is installed in $VENV_DIR."
