# The backup job of the compose deployment (service `backup`, profile ops). Built on the same
# PostgreSQL major as flexmeasures-db, because pg_dump must not be older than the server (an older
# one fails and leaves an empty file); the Redis tools come from the same Redis release as
# flexmeasures-redis, because an older redis-check-rdb cannot read a newer RDB format.
FROM redis:7.4.6-bookworm AS redis

FROM postgres:17.6-bookworm
SHELL ["/bin/sh", "-eu", "-c"]
COPY --from=redis /usr/local/bin/redis-server /usr/local/bin/redis-cli /usr/local/bin/
# hadolint ignore=DL3008
RUN ln -s redis-server /usr/local/bin/redis-check-rdb \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    CARIFLEX_VAR_DIR=/var/lib/cariflex
WORKDIR /opt/cariflex
COPY constraints.txt setup.cfg pyproject.toml README.md ./
COPY cariflex cariflex
COPY vtn vtn
COPY operations operations
# Editable, so operations.backup finds the mounted grafana/ and docker-compose.yml beside it.
RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir -c constraints.txt -e ".[backup]" \
    && groupadd --system --gid 10001 cariflex \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/cariflex --create-home cariflex \
    && install -d -o 10001 -g 10001 /var/lib/cariflex/backups
USER 10001:10001
WORKDIR /var/lib/cariflex
HEALTHCHECK --interval=30s --timeout=5s --retries=3 CMD ["pg_isready", "-h", "flexmeasures-db"]
ENTRYPOINT ["python", "-m", "operations.backup"]
CMD ["create"]
