# building-twin-connector: the runtime image (default target) runs `run`, `check` and every
# other command of the connector; the `emulators` target adds the dev tools' platform
# emulators (devtools/) for `emulate NAME`, which docker-compose.yml's emulator uses.
#
#   docker build -t building-twin-connector .                 # or: make image
#   docker build --target emulators -t building-twin-connector-emulators .
#   docker run --rm -v "$PWD/my-config.yaml:/etc/connector/connector.yaml:ro" \
#       -p 9108:9108 building-twin-connector
#
# The configuration is not baked in: mount it at /etc/connector/connector.yaml (or pass
# `run --config PATH`) and override keys with CONNECTOR_<SECTION>__<KEY> variables; give the
# client secret as CONNECTOR_SINK__CLIENT_SECRET_FILE=/run/secrets/... (docs/operations.md).
#
# BASE is any Debian bookworm image with Python 3.11 and its venv module on PATH as `python`:
# the official slim image by default; tools/image/build passes one made from Debian packages
# where no registry can be reached. Nothing here depends on where that python lives.
ARG BASE=python:3.11-slim-bookworm

# ---- builder: install the package and its pinned dependencies into a virtualenv -----------
FROM ${BASE} AS builder

# A package index other than pip's default, for this build only (tools/image/build passes the
# one the building machine's pip uses); empty: pip's default.
ARG PIP_INDEX=""

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# The pinned dependencies first, from pyproject.toml alone: this layer is reused until the pins
# change, so a change to the sources rebuilds only the small layers below it.
COPY pyproject.toml ./
RUN if [ -n "$PIP_INDEX" ]; then export PIP_INDEX_URL="$PIP_INDEX"; fi \
    && python -m venv /opt/venv \
    && python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" > /tmp/requirements.txt \
    && /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt

# README.md is the package's readme (pyproject.toml names it).
COPY README.md ./
COPY connector/ connector/
RUN if [ -n "$PIP_INDEX" ]; then export PIP_INDEX_URL="$PIP_INDEX"; fi \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps . \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/building-twin-connector --version

# ---- devtools: the same virtualenv plus the emulators (never in the runtime image) ---------
FROM builder AS devtools-builder
ARG PIP_INDEX=""
COPY devtools/pyproject.toml devtools/
COPY devtools/twin_emulators/ devtools/twin_emulators/
COPY devtools/twin_devtools/ devtools/twin_devtools/
RUN if [ -n "$PIP_INDEX" ]; then export PIP_INDEX_URL="$PIP_INDEX"; fi \
    && /opt/venv/bin/pip install --no-cache-dir ./devtools \
    && /opt/venv/bin/building-twin-connector emulate buildingminds --help >/dev/null

# ---- what both images share: the user, the environment, the entry point --------------------
FROM ${BASE} AS base

LABEL org.opencontainers.image.title="building-twin-connector" \
      org.opencontainers.image.description="Kafka to building digital-twin platforms (BuildingMinds first): windowed, rate-limited, tracked, with nothing lost." \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH="/opt/venv/bin:${PATH}"

RUN groupadd --system --gid 10001 connector \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin connector

# Numeric, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001

# The connector drains on SIGTERM (stop intake, finish in-flight requests, commit, exit 0);
# it handles the signal itself, so it needs no init process as PID 1.
STOPSIGNAL SIGTERM

ENTRYPOINT ["building-twin-connector"]

# ---- emulators: `emulate NAME` for demos and the compose stack (--target emulators) --------
FROM base AS emulators
COPY --from=devtools-builder /opt/venv /opt/venv
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=6 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/_emulator/health', timeout=4)"]
CMD ["emulate", "buildingminds", "--host", "0.0.0.0", "--port", "8080"]

# ---- runtime (the default target): the connector's virtualenv only -------------------------
FROM base AS runtime
COPY --from=builder /opt/venv /opt/venv

# /metrics, /healthz, /readyz (metrics.port)
EXPOSE 9108

# Liveness only (/healthz); readiness (/readyz) is for the orchestrator's probes. No curl in
# a slim image: Python's urllib raises on anything but 2xx, which exits 1.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=4)"]

CMD ["run", "--config", "/etc/connector/connector.yaml"]
