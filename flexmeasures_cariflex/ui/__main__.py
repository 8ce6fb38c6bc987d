"""``python -m flexmeasures_cariflex.ui fetch | lock | check``: the UI assets (see ``vendor.py``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flexmeasures_cariflex.ui import vendor
from flexmeasures_cariflex.ui.vendor import (
    LOCK_FILE,
    assets,
    fetch,
    lock_packages,
    missing_files,
    vendor_dir,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flexmeasures_cariflex.ui", description=vendor.__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = sub.add_parser("fetch", help="download, check and unpack the locked UI assets")
    fetch_cmd.add_argument(
        "--dest", type=Path, help="default: $CARIFLEX_UI_VENDOR_DIR or vendor/ next to this module"
    )
    sub.add_parser("lock", help="rewrite vendor.lock.json's tarballs and integrity hashes from the registry")
    sub.add_parser("check", help="say which locked assets are missing (exit 1 if any)")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        fetch(args.dest)
        return 0
    if args.command == "lock":
        LOCK_FILE.write_text(json.dumps(lock_packages(), indent=2) + "\n")
        return 0
    missing = missing_files()
    for url in missing:
        print(f"missing: {url}")
    print(f"{len(assets()) - len(missing)} of {len(assets())} UI assets present in {vendor_dir()}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
