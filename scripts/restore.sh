#!/bin/sh
# Cariflex backups: python -m operations.backup restore --help. Add --compose first to run it in the
# compose stack's backup container (docs/deploy.md).
exec "$(dirname "$0")/_backup.sh" restore "$@"
