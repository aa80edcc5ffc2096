# The two commands of the README: `make run` and `make test`. Every step is idempotent.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
RASA_VENV := .venv-rasa
SYSTEM_PACKAGES := python3-venv espeak-ng libsndfile1 sip-tester baresip-core kamailio kamailio-tls-modules chromium docker-compose
BIN := $(VENV)/bin
# Packages used for one data file each, installed without their dependencies:
# pipecat-ai ships the Smart Turn v3 end-of-turn model (BSD-2).
NO_DEPS_PACKAGES := pipecat-ai==1.14.0

.PHONY: run test install install-test system-packages rasa train lint clean

run: install train
	@echo "==> starting the node (Ctrl-C stops everything)"
	$(BIN)/switchboard run

test: install-test train lint
	@echo "==> running the test suite"
	$(BIN)/pytest

install: system-packages $(VENV)/.installed rasa

install-test: system-packages $(VENV)/.installed-test rasa

system-packages:
	@scripts/install-system-packages.sh $(SYSTEM_PACKAGES)

$(VENV)/bin/python:
	@echo "==> creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

$(VENV)/.installed: $(VENV)/bin/python pyproject.toml
	@echo "==> installing Switchboard and its Python packages into $(VENV)"
	$(BIN)/pip install --progress-bar on -e .
	$(BIN)/pip install --progress-bar on --no-deps $(NO_DEPS_PACKAGES)
	@touch $@

$(VENV)/.installed-test: $(VENV)/bin/python pyproject.toml
	@echo "==> installing Switchboard with its test tools into $(VENV)"
	$(BIN)/pip install --progress-bar on -e '.[test]'
	$(BIN)/pip install --progress-bar on --no-deps $(NO_DEPS_PACKAGES)
	@touch $(VENV)/.installed $@

rasa:
	@scripts/install-rasa-venv.sh $(RASA_VENV)

train: $(VENV)/.installed rasa
	@echo "==> training the Rasa bot if its files changed"
	$(BIN)/switchboard dialog train

lint: $(VENV)/.installed-test
	@echo "==> ruff, mypy and the layers contract (.importlinter)"
	$(BIN)/ruff check .
	$(BIN)/mypy switchboard speech dialog telephony admin analytics
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) $(RASA_VENV) var test-artifacts
