# syntax=docker/dockerfile:1
# One image for every Cohort role in docker-compose.yml: hospital nodes, committee members,
# the SuperLink, the coordinator (flower-superexec running Cohort's ServerApp) and the
# sponsor's one-shot steps. Installs what `make setup` installs, without the dev tools:
# the CPU build of torch, the project with requirements/constraints.txt, CrypTen --no-deps.
# Nothing is installed at run time (pip has no index, Flower's runtime dependency
# installation is off), nothing reports usage (Flower's telemetry is off, see
# core/offline.py) and the processes run as the unprivileged user `cohort`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    VIRTUAL_ENV=/opt/venv

RUN python -m venv /opt/venv
ENV PATH=/opt/cohort/deploy/compose:/opt/venv/bin:$PATH

WORKDIR /opt/cohort

# torch first, in its own layer: PyPI's default Linux wheel is the multi-GB CUDA build, so
# take the CPU build the constraints pin (torch==2.13.0+cpu) from PyTorch's CPU index.
COPY requirements/constraints.txt requirements/constraints.txt
RUN pip install --index-url https://download.pytorch.org/whl/cpu \
        "torch==$(sed -n 's/^torch==//p' requirements/constraints.txt)"

# The project (a regular install; the source tree stays in /opt/cohort because
# `cohort study launch` builds the Flower App Bundle from it with `flwr run`).
COPY pyproject.toml README.md ./
COPY core core
COPY federation federation
COPY crypto crypto
COPY clients clients
COPY aggregator aggregator
COPY bounties bounties
# CrypTen declares the dead `sklearn` package: installed without its metadata deps (its real
# run-time deps are in pyproject's dependencies).
RUN pip install -c requirements/constraints.txt . \
    && pip install --no-deps crypten==0.4.1 \
    && rm -rf build ./*.egg-info \
    && python -c "import flwr, opacus, tenseal; from cohort.crypto.crypten_compat import load_crypten; load_crypten()"

# The Compose steps, healthchecks and config files (deploy/compose is on PATH).
COPY deploy/compose deploy/compose
RUN chmod 0755 deploy/compose/*.py

# The unprivileged user, and every mount point of docker-compose.yml owned by it: a fresh
# named volume takes the owner and mode of the directory it is mounted on.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin cohort \
    && mkdir -p /home/cohort/.flwr /var/lib/cohort /var/lib/cohort-member /data \
        /sponsor/keys /sponsor/data /sponsor/out /certs /ca /public /pki /state /run/secrets \
        /tls/superlink /tls/member-1 /tls/member-2 /tls/member-3 \
    && chown cohort:cohort /home/cohort/.flwr /var/lib/cohort /var/lib/cohort-member /data \
        /sponsor/keys /sponsor/data /sponsor/out /certs /ca /public /pki /state /run/secrets \
        /tls/superlink /tls/member-1 /tls/member-2 /tls/member-3 \
    && chmod 0700 /var/lib/cohort /var/lib/cohort-member /sponsor/keys /pki /run/secrets \
        /tls/superlink /tls/member-1 /tls/member-2 /tls/member-3

# No network at run time: no package index, no Flower telemetry or update check, no
# `uv sync` of app dependencies when a run starts.
ENV PIP_NO_INDEX=1 \
    FLWR_HOME=/home/cohort/.flwr \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1

USER cohort
CMD ["cohort", "--help"]
