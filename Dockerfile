# syntax=docker/dockerfile:1
# omnirec: one image for the gRPC service (the default command) and the training job.
#
#   docker build -t omnirec .
#   docker run … omnirec                                          # python -m service serve
#   docker run … omnirec python -m training train --events /data/events.parquet
#
# compose.yaml wires it to Redis and an MLflow server; README.md "Containers" explains it.
# tests/test_containers.py checks this file without a Docker daemon (the Python version
# against pyproject's requires-python, the user, the copied paths, the ports).

# --- build: the package and its runtime dependencies, into a virtual environment -------
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/omnirec
WORKDIR /src

# Dependencies first, in their own layer, so a code change does not reinstall them.
# Wheels only: every runtime dependency ships manylinux wheels, so a dependency that
# would need a compiler fails the build here instead of slowing it down.
COPY pyproject.toml README.md LICENSE ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
 && /opt/omnirec/bin/pip install --only-binary=:all: -r requirements.txt

# The package itself, a regular (not editable) install without the dev extras. Its build
# backend (setuptools) lives in pip's throw-away build environment, not in the venv.
COPY omnirec ./omnirec
COPY service ./service
COPY training ./training
COPY devtools ./devtools
RUN /opt/omnirec/bin/pip install --no-deps . \
 && /opt/omnirec/bin/pip check

# --- runtime: the venv, the OpenMP runtime, a non-root user --------------------------
FROM python:3.11-slim
# libgomp1: the OpenMP runtime implicit's compiled extensions link against; the wheels
# do not bring it and the slim image lacks it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*

# One unprivileged user; the folders compose mounts volumes on belong to it, so fresh
# named volumes start out writable by it. The code (/opt/omnirec) stays root's: read-only.
RUN groupadd --system --gid 10001 omnirec \
 && useradd --system --uid 10001 --gid omnirec --home-dir /home/omnirec --create-home \
      --shell /usr/sbin/nologin omnirec \
 && install -d -o omnirec -g omnirec /var/lib/omnirec /var/lib/omnirec/keys \
      /var/lib/omnirec/demo /var/lib/omnirec/mlflow

COPY --from=build /opt/omnirec /opt/omnirec
COPY --chmod=755 deploy/healthcheck.py /usr/local/bin/omnirec-healthcheck
COPY --chmod=755 deploy/train_job.py /usr/local/bin/omnirec-train-job

ENV PATH=/opt/omnirec/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /var/lib/omnirec
USER omnirec

# 50051: gRPC (OMNIREC_PORT). 9100: Prometheus /metrics when OMNIREC_METRICS_PORT=9100
# (off unless set; compose sets it).
EXPOSE 50051 9100

# The standard gRPC health service on 127.0.0.1:$OMNIREC_PORT, plaintext: SERVING once
# the model is loaded and while Redis answers. Turn it off for TLS or for the training
# job (compose does).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["omnirec-healthcheck"]

CMD ["python", "-m", "service", "serve"]
