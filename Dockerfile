# syntax=docker/dockerfile:1
# One image for every jobsched role: `docker run jobsched:latest run --role scheduler`.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: install the package and its dependencies into a virtual environment ----
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/jobsched

WORKDIR /src
# The build context is filtered by .dockerignore (no tests, caches or VCS data).
COPY . .
RUN /opt/jobsched/bin/pip install . \
    && /opt/jobsched/bin/jobsched --help >/dev/null \
    && mkdir -p /src/config

# ---- runtime: the virtual environment and the default config, nothing else ----
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="jobsched" \
      org.opencontainers.image.description="Distributed job scheduler: api, scheduler and worker roles" \
      org.opencontainers.image.licenses="Apache-2.0"

# Inside a container the api and the health/metrics server must listen on every
# interface (the settings default to 127.0.0.1); compose and `docker run -e` can override.
ENV PATH=/opt/jobsched/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    JOBSCHED_API_HOST=0.0.0.0 \
    JOBSCHED_API_PORT=8080 \
    JOBSCHED_METRICS_HOST=0.0.0.0 \
    JOBSCHED_METRICS_PORT=9100

RUN groupadd --system --gid 10001 jobsched \
    && useradd --system --uid 10001 --gid jobsched --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin jobsched

COPY --from=build /opt/jobsched /opt/jobsched
WORKDIR /app
# config/jobsched.toml (if the project ships one) is read relative to the working directory.
COPY --from=build /src/config /app/config

# Every role runs as this unprivileged user. A worker gives each shell run a uid of its
# own, which only root can do: run as this user it refuses shell runs (a WARNING at
# start-up, "shell": {"enabled": false} on /readyz). compose.yaml runs the worker as root
# with only the capabilities the switch needs (docs/security.md, "Shell jobs run contained").
USER jobsched:jobsched
EXPOSE 8080 9100

ENTRYPOINT ["jobsched"]
CMD ["run", "--role", "api"]
