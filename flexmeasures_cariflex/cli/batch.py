"""Run several ``flexmeasures`` commands in one process.

Every ``flexmeasures`` call spends 7-8 s importing its stack before doing anything; the demo
runs three in a row, so it pays that once here. Usage:

    python -m flexmeasures_cariflex.cli.batch "db upgrade" "cariflex setup --fleet f.yaml"
"""

from __future__ import annotations

import shlex
import sys


def main(argv: list[str] | None = None) -> int:
    from flask.cli import ScriptInfo
    from flexmeasures.app import create
    from flexmeasures.utils.app_utils import flexmeasures_cli

    # One ScriptInfo caches one app for all commands: FlexMeasures cannot create a second app
    # in the same process (its rq-dashboard blueprint is global).
    info = ScriptInfo(create_app=create)
    for command in argv if argv is not None else sys.argv[1:]:
        print(f"$ flexmeasures {command}", flush=True)
        try:
            flexmeasures_cli.main(
                shlex.split(command), prog_name="flexmeasures", standalone_mode=False, obj=info
            )
        except SystemExit as exc:  # commands exit non-zero to signal failure
            if exc.code not in (0, None):
                return int(exc.code) if isinstance(exc.code, int) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
