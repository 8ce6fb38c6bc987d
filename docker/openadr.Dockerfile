# The OpenADR side: the VTN and the VEN bridge (which also runs the device simulator), without
# FlexMeasures. Build from the repository root, one target per image:
#     docker build -f docker/openadr.Dockerfile --target vtn -t cariflex/openadr-vtn:0.1.0 .
#     docker build -f docker/openadr.Dockerfile --target ven -t cariflex/openadr-ven:0.1.0 .
#     docker build -f docker/openadr.Dockerfile --target ingest -t cariflex/meter-ingest:0.1.0 .
FROM python:3.11.13-slim-bookworm AS base
SHELL ["/bin/sh", "-eu", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CARIFLEX_VAR_DIR=/var/lib/cariflex
RUN groupadd --system --gid 10001 cariflex \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/cariflex --create-home cariflex
WORKDIR /opt/cariflex
COPY constraints.txt setup.cfg pyproject.toml README.md ./
COPY cariflex/__init__.py cariflex/__init__.py

FROM base AS vtn
# Dependencies of the VTN extra only (no FlexMeasures), then the code without dependencies.
RUN pip install --no-cache-dir -c constraints.txt ".[vtn]"
COPY cariflex cariflex
COPY vtn vtn
RUN pip install --no-cache-dir --no-deps . \
    && install -d -o 10001 -g 10001 /var/lib/cariflex/vtn
USER 10001:10001
WORKDIR /var/lib/cariflex
ENV CARIFLEX_VTN_HOST=0.0.0.0
EXPOSE 8080 8081
HEALTHCHECK --interval=15s --timeout=6s --start-period=20s --retries=3 CMD ["cariflex-vtn", "health"]
ENTRYPOINT ["cariflex-vtn"]
CMD ["serve", "--insecure"]

FROM base AS ven
# The VEN and the device simulator, whose PV meters need pvlib (the sim extra).
RUN pip install --no-cache-dir -c constraints.txt ".[ven,sim]"
COPY cariflex cariflex
COPY ven_bridge ven_bridge
COPY cem cem
COPY simulator simulator
RUN pip install --no-cache-dir --no-deps . \
    && install -d -o 10001 -g 10001 /var/lib/cariflex/ven
USER 10001:10001
WORKDIR /var/lib/cariflex
ENV CARIFLEX_S2_HOST=0.0.0.0 \
    CARIFLEX_VEN_STATE_DIR=/var/lib/cariflex/ven
EXPOSE 8765
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 CMD ["cariflex-ven", "status", "--check"]
ENTRYPOINT ["cariflex-ven"]
CMD ["run"]

FROM base AS ingest
# The meter ingestion service: MQTT in, PostgreSQL out; neither FlexMeasures nor openleadr.
RUN pip install --no-cache-dir -c constraints.txt ".[ingest]"
COPY cariflex cariflex
COPY meter_ingest meter_ingest
RUN pip install --no-cache-dir --no-deps .
USER 10001:10001
WORKDIR /var/lib/cariflex
HEALTHCHECK --interval=20s --timeout=10s --start-period=30s --retries=3 CMD ["cariflex-ingest", "health"]
ENTRYPOINT ["cariflex-ingest"]
CMD ["run"]
