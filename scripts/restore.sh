#!/bin/sh
# Cariflex backups: see cariflex/backup.py (python -m cariflex.backup restore --help).
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
python=${CARIFLEX_PYTHON:-$here/.venv/bin/python}
exec "$python" -m cariflex.backup restore "$@"
