# building-twin-connector: one image for `run` (the connector), `emulate buildingminds` and
# `produce-sample` (docker-compose.yml uses it for all three).
#
#   docker build -t building-twin-connector .
#   docker run --rm -v "$PWD/my-config.yaml:/etc/connector/connector.yaml:ro" \
#       -p 9108:9108 building-twin-connector
#
# The configuration is not baked in: mount it at /etc/connector/connector.yaml (or pass
# `run --config PATH`) and override keys with CONNECTOR_<SECTION>__<KEY> variables; give the
# client secret as CONNECTOR_SINK__CLIENT_SECRET_FILE=/run/secrets/... (docs/operations.md).

# ---- builder: install the package and its pinned dependencies into a virtualenv -----------
FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python -m venv /opt/venv

# pyproject.toml pins every runtime dependency exactly; README.md is the package's readme.
COPY pyproject.toml README.md ./
COPY connector/ connector/
RUN /opt/venv/bin/pip install --no-cache-dir . \
    && /opt/venv/bin/building-twin-connector --version

# ---- runtime: the virtualenv on a clean slim image, as a non-root user ---------------------
FROM python:3.11-slim-bookworm

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

COPY --from=builder /opt/venv /opt/venv

# Numeric, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001

# /metrics, /healthz, /readyz (metrics.port)
EXPOSE 9108

# The connector drains on SIGTERM (stop intake, finish in-flight requests, commit, exit 0);
# it handles the signal itself, so it needs no init process as PID 1.
STOPSIGNAL SIGTERM

# Liveness only (/healthz); readiness (/readyz) is for the orchestrator's probes. No curl in
# a slim image: Python's urllib raises on anything but 2xx, which exits 1.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=4)"]

ENTRYPOINT ["building-twin-connector"]
CMD ["run", "--config", "/etc/connector/connector.yaml"]
