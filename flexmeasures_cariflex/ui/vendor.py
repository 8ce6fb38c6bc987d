"""The UI assets FlexMeasures 1.0.1 loads from CDNs, fetched from the npm registry at install time.

``vendor.lock.json`` lists, for every CDN address FlexMeasures' pages and style sheet use, the npm
package, its exact version and the file in it; and per package the tarball's address and its
``sha512`` integrity as the registry published it. ``fetch`` downloads each tarball once, refuses
one whose hash differs, and unpacks the listed files (and the fonts and images their style sheets
refer to, by relative path) into ``CARIFLEX_UI_VENDOR_DIR`` (default: ``vendor/`` next to this
module; git ignores it). ``make install`` and the Docker image run it; ``make demo`` then needs no
internet for the UI.

``lock`` (for maintainers, after a FlexMeasures upgrade) asks the registry for each package's
tarball and integrity and rewrites the lock file; review the diff like any other pin.

    python -m flexmeasures_cariflex.ui fetch [--dest DIR]
    python -m flexmeasures_cariflex.ui lock
    python -m flexmeasures_cariflex.ui check
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
LOCK_FILE = HERE / "vendor.lock.json"
REGISTRY = "https://registry.npmjs.org"
URL_PREFIX = "/cariflex/ui-vendor"


@dataclass(frozen=True)
class Asset:
    cdn_url: str  # as FlexMeasures' pages (or its style sheet) write it
    package: str  # npm package
    version: str  # exact
    path: str  # the file in the package

    @property
    def local_url(self) -> str:
        return f"{URL_PREFIX}/{self.package}@{self.version}/{self.path}"


def vendor_dir() -> Path:
    from cariflex import settings

    return Path(settings.get("CARIFLEX_UI_VENDOR_DIR") or HERE / "vendor")


def load_lock(path: Path = LOCK_FILE) -> dict:
    return json.loads(path.read_text())


def assets(lock: dict | None = None) -> list[Asset]:
    lock = lock or load_lock()
    return [Asset(a["cdn_url"], a["package"], a["version"], a["path"]) for a in lock["assets"]]


def _package_key(package: str, version: str) -> str:
    return f"{package}@{version}"


def _get(url: str, timeout: float = 120) -> bytes:
    import requests

    from cariflex.http_retry import RetryAfter

    response = RetryAfter(name="npm registry").send(lambda: requests.get(url, timeout=timeout))
    response.raise_for_status()
    return response.content


def _integrity_ok(data: bytes, integrity: str) -> bool:
    algorithm, _, expected = integrity.partition("-")
    if algorithm != "sha512":
        return False
    return base64.b64encode(hashlib.sha512(data).digest()).decode() == expected


def _wanted_files(lock: dict, key: str) -> list[str]:
    """The package's listed files and the directories its style sheets refer into (icons are
    made from the icon set's ``icons.json``, listed under ``with``)."""
    package = lock["packages"][key]
    listed = [
        a["path"]
        for a in lock["assets"]
        if _package_key(a["package"], a["version"]) == key and "icon" not in a
    ]
    return sorted({*listed, *package.get("with", [])})


def icon_svg(icon_set: dict, name: str, color: str | None = None) -> str:
    """One icon of an Iconify JSON icon set as the SVG file api.iconify.design would answer."""
    icons, aliases = icon_set.get("icons", {}), icon_set.get("aliases", {})
    while name not in icons and name in aliases:
        name = aliases[name]["parent"]
    icon = icons[name]
    width = icon.get("width", icon_set.get("width", 16))
    height = icon.get("height", icon_set.get("height", 16))
    body = icon["body"] if color is None else icon["body"].replace("currentColor", color)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="1em" height="1em" viewBox="0 0 {width} {height}">'
        f"{body}</svg>"
    )


def _write_icons(lock: dict, key: str, target: Path) -> int:
    icons = [a for a in lock["assets"] if _package_key(a["package"], a["version"]) == key and "icon" in a]
    if not icons:
        return 0
    icon_set = json.loads((target / "icons.json").read_text())
    for asset in icons:
        out = target / asset["path"]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(icon_svg(icon_set, asset["icon"], asset.get("color")))
    (target / "icons.json").unlink()  # the whole set (MBs): only the icons FlexMeasures uses are kept
    return len(icons)


def _members(tar: tarfile.TarFile, wanted: list[str]) -> list[tarfile.TarInfo]:
    """The tarball's regular files under ``package/`` that are wanted (a file, or a directory's
    files); nothing outside ``package/``, no links (a tarball is input we did not write)."""
    chosen = []
    for member in tar.getmembers():
        if not member.isfile() or not member.name.startswith("package/"):
            continue
        inner = member.name[len("package/") :]
        if ".." in Path(inner).parts:
            continue
        if any(inner == w or inner.startswith(w.rstrip("/") + "/") for w in wanted):
            chosen.append(member)
    return chosen


def fetch(dest: Path | None = None, lock: dict | None = None, log=print) -> Path:
    """Download, check and unpack every locked package that is not there yet; returns ``dest``."""
    lock = lock or load_lock()
    dest = dest or vendor_dir()
    dest.mkdir(parents=True, exist_ok=True)
    for key, package in sorted(lock["packages"].items()):
        target = dest / key
        marker = target / ".integrity"
        if marker.exists() and marker.read_text() == package["integrity"]:
            continue
        data = _get(package["tarball"])
        if not _integrity_ok(data, package["integrity"]):
            raise SystemExit(
                f"{key}: the tarball from {package['tarball']} does not match its integrity hash"
            )
        wanted = _wanted_files(lock, key)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = _members(tar, wanted)
            found = {m.name[len("package/") :] for m in members}
            missing = [
                w
                for w in wanted
                if w not in found and not any(f.startswith(w.rstrip("/") + "/") for f in found)
            ]
            if missing:
                raise SystemExit(f"{key}: not in the package: {', '.join(missing)}")
            for member in members:
                out = target / member.name[len("package/") :]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tar.extractfile(member).read())
        made = _write_icons(lock, key, target)
        marker.write_text(package["integrity"])
        log(f"ui-vendor: {key} ({len(members)} files{f', {made} icons' if made else ''})")
    return dest


def missing_files(dest: Path | None = None, lock: dict | None = None) -> list[str]:
    dest = dest or vendor_dir()
    return [a.cdn_url for a in assets(lock) if not (dest / f"{a.package}@{a.version}" / a.path).is_file()]


def lock_packages(lock: dict | None = None) -> dict:
    """Ask the registry for each package's tarball and integrity (maintainers, after an upgrade)."""
    lock = lock or load_lock()
    packages = {}
    for asset in assets(lock):
        key = _package_key(asset.package, asset.version)
        if key in packages:
            continue
        meta = json.loads(_get(f"{REGISTRY}/{asset.package.replace('/', '%2F')}/{asset.version}"))
        previous = lock.get("packages", {}).get(key, {})
        packages[key] = {
            "tarball": meta["dist"]["tarball"],
            "integrity": meta["dist"]["integrity"],
            **({"with": previous["with"]} if previous.get("with") else {}),
        }
    return {**lock, "packages": packages}
