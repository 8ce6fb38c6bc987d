#!/bin/sh
# Shared by full_backup.sh, verify_backup.sh, restore.sh and rotate_backups.sh:
#   ACTION [--compose] ARGS...  ->  python -m operations.backup ACTION ARGS...
# Without --compose it runs with this checkout's .venv (or $CARIFLEX_PYTHON). With --compose it
# runs the same code in the compose stack's `backup` container (pg_dump of flexmeasures-db's
# major version, on the stack's internal network); paths to existing backups on the host
# ($CARIFLEX_BACKUP_DIR, default var/backups) are handed over as the container sees them.
set -eu
action=$1
shift
here=$(cd "$(dirname "$0")/.." && pwd)
if [ "${1:-}" = "--compose" ]; then
    shift
    inside=/var/lib/cariflex/backups
    # The same folder compose mounts: the environment, else .env, else the default.
    dir=${CARIFLEX_BACKUP_DIR:-$(sed -n 's/^CARIFLEX_BACKUP_DIR=//p' "$here/.env" 2>/dev/null | tail -n 1)}
    backups=$(cd "$here" && cd "${dir:-var/backups}" 2>/dev/null && pwd || true)
    for arg do
        shift
        if [ -n "$backups" ] && [ -d "$arg" ] && [ "$(cd "$arg" && pwd)" = "$backups" ]; then
            arg=$inside
        elif [ -n "$backups" ] && [ -f "$arg" ] && [ "$(cd "$(dirname "$arg")" && pwd)" = "$backups" ]; then
            arg=$inside/$(basename "$arg")
        fi
        set -- "$@" "$arg"
    done
    cd "$here"
    exec docker compose --profile ops run --rm -T backup "$action" "$@"
fi
python=${CARIFLEX_PYTHON:-$here/.venv/bin/python}
exec "$python" -m operations.backup "$action" "$@"
