# FlexMeasures server and worker with the Cariflex plugin (docker-compose.yml: flexmeasures-server,
# flexmeasures-worker). Build from the repository root:
#     docker build -f docker/flexmeasures.Dockerfile -t cariflex/flexmeasures:0.1.0 .
# The official image is pinned to the FlexMeasures release the plugin is tested with; the plugin
# is installed with the project's constraints, which also hold FlexMeasures' own dependencies to
# the tested versions (e.g. Flask-Security-Too 5.8.1: FlexMeasures 1.0.1 crashes on 5.9).
FROM lfenergy/flexmeasures:v1.0.1

USER 0
SHELL ["/bin/sh", "-eu", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/cariflex
# Dependencies first: this layer changes only when the pins or the extras change.
COPY constraints.txt setup.cfg pyproject.toml README.md ./
COPY cariflex/__init__.py cariflex/__init__.py
# The image's virtualenv is made by uv and may have no pip of its own.
RUN python -m pip --version > /dev/null 2>&1 || python -m ensurepip; \
    python -m pip install --no-cache-dir -c constraints.txt ".[plugin]"

# Then the code, without touching the dependencies again.
COPY cariflex cariflex
COPY flexmeasures_cariflex flexmeasures_cariflex
COPY operations operations
RUN python -m pip install --no-cache-dir --no-deps . \
    && python -m flexmeasures_cariflex.config \
    && CARIFLEX_UI_VENDOR_DIR=/opt/cariflex/ui-vendor python -m flexmeasures_cariflex.ui fetch \
    && groupadd --system --gid 10001 cariflex \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/cariflex --create-home cariflex

USER 10001:10001
WORKDIR /var/lib/cariflex
ENV CARIFLEX_VAR_DIR=/var/lib/cariflex \
    CARIFLEX_UI_VENDOR_DIR=/opt/cariflex/ui-vendor \
    CARIFLEX_FM_BIND=0.0.0.0:5000
EXPOSE 5000
HEALTHCHECK --interval=20s --timeout=10s --start-period=180s --retries=6 \
    CMD ["curl", "-fsS", "http://127.0.0.1:5000/api/v3_0/health/ready"]
ENTRYPOINT ["python", "-m", "operations.launch"]
CMD ["server"]
