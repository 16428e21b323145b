# syntax=docker/dockerfile:1
# trio_channels in a container; by default it serves the built-in demo on port 8000:
#     docker build -t trio-channels . && docker run --rm -p 8000:8000 trio-channels
# For your own app, and why each line is here: docs/deployment.rst, "Containers".
# tests/e2e/test_container.py checks this file against the CLI and runs its CMD.

ARG PYTHON=3.12

# Build stage: the project from the build context, with its dependencies, into a virtualenv.
FROM python:${PYTHON}-slim AS build
# Optional extras from setup.cfg, comma-separated (--build-arg EXTRAS= for none).
ARG EXTRAS=encryption,jwt
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY . .
RUN /opt/venv/bin/pip install ".${EXTRAS:+[$EXTRAS]}"

# Run stage: the virtualenv only (no source tree, no pip cache), as an unprivileged user.
FROM python:${PYTHON}-slim
# A numeric UID, so that Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 trio-channels \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin trio-channels
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# GET / goes through the channel layer to a worker and back: any answer below 500 (a 404 from
# an app without a "/" route included) means listeners, layer and workers all work.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import http.client, sys; c = http.client.HTTPConnection('127.0.0.1', 8000, timeout=4); c.request('GET', '/'); sys.exit(c.getresponse().status >= 500)"]
# Exec form: Python is PID 1 and gets docker stop's SIGTERM (a graceful shutdown).
CMD ["python", "-m", "trio_channels", "run", "--bind", "0.0.0.0:8000"]
