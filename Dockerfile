# One Switchboard node: app + managed Rasa server and action server.
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      espeak-ng libsndfile1 make gcc g++ kamailio \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md COPYING ./
COPY switchboard switchboard
COPY speech speech
COPY dialog dialog
COPY telephony telephony
COPY admin admin
COPY analytics analytics
COPY migrations migrations
COPY scripts scripts

RUN python -m venv .venv && .venv/bin/pip install --no-cache-dir -e .
RUN scripts/install-rasa-venv.sh .venv-rasa
RUN .venv/bin/switchboard dialog train

ENV SWITCHBOARD_DATA_DIR=/var/lib/switchboard
VOLUME /var/lib/switchboard
CMD [".venv/bin/switchboard", "run"]
