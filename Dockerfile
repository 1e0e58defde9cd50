# geotm: dnsd, probes and the drills in one image; `client` adds skopeo for the compose drill.
#   docker build -t geotm:local --target geotm .
#   docker build -t geotm-client:local --target client .
FROM python:3.11-slim-bookworm AS geotm
RUN apt-get update \
    && apt-get install -y --no-install-recommends openssl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml ./
COPY dnsd ./dnsd
COPY probes ./probes
COPY standin ./standin
COPY drills ./drills
COPY config ./config
RUN pip install --no-cache-dir .
ENV PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/geotm --create-home geotm
USER geotm
EXPOSE 53/udp 53/tcp 8053 8054
CMD ["dnsd", "--help"]

FROM geotm AS client
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends skopeo ca-certificates \
    && rm -rf /var/lib/apt/lists/*
ENTRYPOINT ["python", "-m", "drills"]
CMD ["drill", "--compose"]
