# syntax=docker/dockerfile:1
#
# docker build -t synthd .
# docker run --stop-timeout 45 -e OPENAI_API_KEY -v "$PWD/spool:/srv/synthd/spool" synthd
#
# Docker's default stop timeout is 10 s, shorter than synthd's 30 s drain: give `docker run`
# --stop-timeout 45 (compose.yaml sets stop_grace_period) or in-flight work is killed.

# One base for both stages: the venv's interpreter symlinks point into the base image, so the
# builder and the final stage must carry the same Python at the same path.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
RUN python -m venv /opt/venv
# README.md* : the readme is optional to the build, and a wildcard may match nothing.
COPY pyproject.toml README.md* ./
COPY synthd/ synthd/
# Every dependency ships manylinux wheels for CPython 3.11, so no compiler is needed here.
# pip and setuptools leave the venv afterwards: the image runs synthd, it installs nothing.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install /wheels/synthd-*.whl \
 && /opt/venv/bin/pip uninstall --yes pip setuptools

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# A fixed uid/gid so bind-mounted spool/, out/ and state/ can be chowned to it on the host.
# --no-log-init: a high uid would otherwise grow a sparse /var/log/lastlog into the layer.
RUN groupadd --gid 10001 synthd \
 && useradd --uid 10001 --gid synthd --no-log-init --no-create-home \
        --home-dir /srv/synthd --shell /usr/sbin/nologin synthd
COPY --from=builder /opt/venv /opt/venv
WORKDIR /srv/synthd
COPY config/ config/
COPY prompts/ prompts/
# Created before VOLUME so that a fresh named volume starts out owned by synthd.
RUN mkdir spool out state && chown synthd:synthd spool out state
VOLUME ["/srv/synthd/spool", "/srv/synthd/out", "/srv/synthd/state"]
EXPOSE 9464
STOPSIGNAL SIGTERM
# start-period covers checkpoint recovery before the service answers /healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["synthd", "healthcheck", "--url", "http://127.0.0.1:9464/healthz"]
USER synthd
# Exec form: synthd is PID 1 and receives SIGTERM itself (it installs its own handler, which
# PID 1 needs, and spawns no children to reap).
ENTRYPOINT ["synthd"]
CMD ["run", "--config", "config/synthd.toml"]
