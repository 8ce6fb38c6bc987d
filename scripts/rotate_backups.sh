#!/bin/sh
# Cariflex backups: python -m operations.backup rotate --help. Add --compose first to run it in the
# compose stack's backup container (docs/deploy.md).
exec "$(dirname "$0")/_backup.sh" rotate "$@"
