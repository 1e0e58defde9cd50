# geotm: dnsd, probes and the drills in one image; `client` adds skopeo for the compose drill;
# `registry` is Debian's docker-registry (CNCF distribution), for machines without Docker Hub.
#   docker build -t geotm:local --target geotm .
#   docker build -t geotm-client:local --target client .
#   docker build -t geotm-registry:local --target registry .
# BASE is any Debian bookworm image: python:3.11-slim-bookworm (default) has Python; a plain Debian
# base (scripts/compose-drill makes one with debootstrap) gets Debian's python3, also 3.11.
# Build arguments, all optional: EXTRA_CA (PEM text, for pip behind a TLS-inspecting proxy; used
# during the build only, never installed), PIP_INDEX_URL (a PyPI mirror).
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS geotm
ARG EXTRA_CA=
ARG PIP_INDEX_URL=
RUN set -eu; \
    need="openssl ca-certificates"; \
    command -v python3 >/dev/null || need="$need python3 python3-venv"; \
    apt-get update -qq; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null; \
    rm -rf /var/lib/apt/lists/*
# uid and gid 10001: the pki service gives group 10001 the keys and the admin token
RUN groupadd --system --gid 10001 geotm \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/geotm --create-home geotm
WORKDIR /app
COPY pyproject.toml ./
# a virtual environment: the same on both bases (Debian's python3 refuses system-wide pip installs);
# the dependencies first, in a layer of their own that a change of geotm's code leaves cached
RUN set -eu; \
    [ -n "$PIP_INDEX_URL" ] || unset PIP_INDEX_URL; \
    if [ -n "$EXTRA_CA" ]; then \
        { cat /etc/ssl/certs/ca-certificates.crt; printf '%s\n' "$EXTRA_CA"; } > /tmp/build-ca.pem; \
        export PIP_CERT=/tmp/build-ca.pem; \
    fi; \
    python3 -m venv /opt/geotm; \
    python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); \
                print("\n".join(p["project"]["dependencies"] + p["build-system"]["requires"] + ["wheel"]))' \
        > /tmp/requirements.txt; \
    /opt/geotm/bin/pip install --no-cache-dir --disable-pip-version-check -q -r /tmp/requirements.txt; \
    rm -f /tmp/build-ca.pem /tmp/requirements.txt
COPY dnsd ./dnsd
COPY probes ./probes
COPY standin ./standin
COPY drills ./drills
COPY config ./config
COPY setup.py ./
# the batched UDP extension (dnsd/protocol/_fastudp.c) needs a C compiler and Python's headers while it
# is built, not after: installed for this step and removed in it, so the image stays without them
RUN set -eu; \
    build="gcc libc6-dev"; \
    python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
        || build="$build python3-dev"; \
    apt-get update -qq; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $build >/dev/null; \
    /opt/geotm/bin/pip install --no-cache-dir --disable-pip-version-check -q --no-deps --no-build-isolation .; \
    /opt/geotm/bin/python -c 'import dnsd.protocol._fastudp'; \
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq --auto-remove $build >/dev/null; \
    rm -rf /var/lib/apt/lists/* build *.egg-info
ENV PATH=/opt/geotm/bin:$PATH PYTHONUNBUFFERED=1
USER geotm
EXPOSE 53/udp 53/tcp 8053 8054
CMD ["dnsd", "--help"]

FROM geotm AS client
USER root
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends skopeo >/dev/null \
    && rm -rf /var/lib/apt/lists/*
ENTRYPOINT ["python", "-m", "drills"]
CMD ["drill", "--compose"]

# what registry:2 runs (distribution 2.8, same config file path, REGISTRY_* overrides), built
# from Debian: wget for the compose health check, as registry:2 has busybox's
FROM ${BASE} AS registry
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-registry wget >/dev/null \
    && rm -rf /var/lib/apt/lists/*
COPY deploy/docker/registry-config.yml /etc/docker/registry/config.yml
EXPOSE 5000
ENTRYPOINT ["docker-registry"]
CMD ["serve", "/etc/docker/registry/config.yml"]
