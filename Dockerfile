# One image for every Switchboard process: a node (`switchboard run`), the Kamailio front
# (`switchboard front`), a speech server (`switchboard speech-server`) and the dialog tier
# (`switchboard dialog serve`). docker-compose.yml runs one node; deploy/ runs a cluster.
#
#   docker build -t switchboard .
#   docker build --build-arg WITH_CUDA=1 -t switchboard-cuda .   # speech servers on a GPU
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      espeak-ng libsndfile1 make gcc g++ kamailio kamailio-tls-modules \
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
# The Kamailio configuration template (`switchboard front`, SWITCHBOARD_SIP_WORKERS > 1).
COPY deploy/kamailio deploy/kamailio

RUN python -m venv .venv && .venv/bin/pip install --no-cache-dir -e .
# WITH_CUDA=1: the CUDA 12 libraries CTranslate2 loads to run Whisper on a GPU (cuBLAS and
# cuDNN 9, as pip packages; the host needs only the NVIDIA driver and container toolkit).
ARG WITH_CUDA=0
RUN if [ "$WITH_CUDA" = 1 ]; then \
      .venv/bin/pip install --no-cache-dir nvidia-cublas-cu12 "nvidia-cudnn-cu12>=9,<10"; \
    fi
ENV LD_LIBRARY_PATH=/app/.venv/lib/python3.11/site-packages/nvidia/cublas/lib:/app/.venv/lib/python3.11/site-packages/nvidia/cudnn/lib
RUN scripts/install-rasa-venv.sh .venv-rasa

ENV PATH=/app/.venv/bin:$PATH \
    SWITCHBOARD_DATA_DIR=/var/lib/switchboard
# Trained into the data directory, where the dialog servers look for it: a new volume
# starts with the model, so a node or dialog server does not train on its first start.
RUN switchboard dialog train
VOLUME /var/lib/switchboard
CMD ["switchboard", "run"]
