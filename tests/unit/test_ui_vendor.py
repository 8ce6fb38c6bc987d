"""The offline UI's assets: the lock covers every CDN address of the installed FlexMeasures, a
tarball is only unpacked when its hash matches and only inside its folder, and pages are rewritten
to the local copies (issue 21, point 4; the browser test is tests/e2e/test_ui_offline.py)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import pytest
import responses
from hypothesis import given
from hypothesis import strategies as st

from flexmeasures_cariflex.ui import offline, vendor


def _fm_root() -> Path:
    import flexmeasures

    return Path(flexmeasures.__file__).parent


def test_the_lock_covers_every_cdn_address_flexmeasures_pages_and_style_sheet_use():
    """A FlexMeasures upgrade that adds a CDN asset fails here, before a user sees a broken page."""
    from flexmeasures.utils.config_defaults import Config

    versions = Config.FLEXMEASURES_JS_VERSIONS
    texts = [p.read_text() for p in (_fm_root() / "ui" / "templates").rglob("*.html")]
    texts += [p.read_text() for p in (_fm_root() / "ui" / "static" / "css").glob("*.css")]
    texts.append((_fm_root() / "ui" / "utils" / "view_utils.py").read_text())  # the asset icons
    found = set()
    for text in texts:
        text = re.sub(
            r"\{\{\s*(?:config\.FLEXMEASURES_JS_VERSIONS|js_versions)\.(\w+)\s*\}\}",
            lambda m: versions[m.group(1)],
            text,
        )
        found |= {u for u in offline.CDN_URL.findall(text) if not u.startswith("https://api.mapbox.com/")}
    locked = {a.cdn_url for a in vendor.assets()} | set(offline.LOGOS)
    assert found - locked == set()
    assert len(found) > 40


def test_every_locked_package_has_a_tarball_and_an_integrity_hash():
    lock = vendor.load_lock()
    for asset in vendor.assets(lock):
        package = lock["packages"][f"{asset.package}@{asset.version}"]
        assert package["tarball"].startswith("https://registry.npmjs.org/")
        assert package["integrity"].startswith("sha512-")


def _tarball(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def _lock(data: bytes, path: str = "dist/x.js") -> dict:
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    return {
        "assets": [
            {
                "cdn_url": "https://unpkg.com/x@1.0.0/dist/x.js",
                "package": "x",
                "version": "1.0.0",
                "path": path,
            }
        ],
        "packages": {
            "x@1.0.0": {"tarball": "https://registry.npmjs.org/x/-/x-1.0.0.tgz", "integrity": integrity}
        },
    }


@responses.activate
def test_a_tarball_whose_hash_differs_is_refused_and_nothing_is_unpacked(tmp_path):
    good = _tarball({"package/dist/x.js": b"ok()"})
    lock = _lock(good)
    responses.get(lock["packages"]["x@1.0.0"]["tarball"], body=_tarball({"package/dist/x.js": b"evil()"}))
    with pytest.raises(SystemExit, match="does not match its integrity hash"):
        vendor.fetch(tmp_path, lock, log=lambda _: None)
    assert list(tmp_path.iterdir()) == []


@responses.activate
def test_only_the_wanted_regular_files_inside_the_package_are_unpacked(tmp_path):
    data = _tarball(
        {"package/dist/x.js": b"ok()", "package/../../escape.js": b"no", "package/other.js": b"no"},
        links={"package/dist/link.js": "/etc/passwd"},
    )
    lock = _lock(data)
    lock["packages"]["x@1.0.0"]["with"] = ["dist"]
    responses.get(lock["packages"]["x@1.0.0"]["tarball"], body=data)
    vendor.fetch(tmp_path / "v", lock, log=lambda _: None)
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["v/x@1.0.0/.integrity", "v/x@1.0.0/dist/x.js"]
    assert vendor.missing_files(tmp_path / "v", lock) == []
    # a second fetch finds it there and downloads nothing
    responses.reset()
    vendor.fetch(tmp_path / "v", lock, log=lambda _: None)


@responses.activate
def test_a_listed_file_the_package_lacks_is_named(tmp_path):
    data = _tarball({"package/dist/y.js": b"ok()"})
    lock = _lock(data)
    responses.get(lock["packages"]["x@1.0.0"]["tarball"], body=data)
    with pytest.raises(SystemExit, match="not in the package: dist/x.js"):
        vendor.fetch(tmp_path, lock, log=lambda _: None)


def test_an_icon_is_made_as_iconify_serves_it_aliases_and_colour_included():
    icon_set = {
        "width": 24,
        "height": 24,
        "icons": {"battery": {"body": '<path fill="currentColor" d="M0 0h1"/>'}},
    }
    icon_set["aliases"] = {"accumulator": {"parent": "battery"}}
    svg = vendor.icon_svg(icon_set, "accumulator", "white")
    assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg"') and 'viewBox="0 0 24 24"' in svg
    assert 'fill="white"' in svg and "currentColor" not in svg


def test_a_page_is_pointed_at_the_local_copies_and_an_unknown_cdn_address_is_left_and_named(caplog):
    urls = {"https://d3js.org/d3.v6.min.js": "/cariflex/ui-vendor/d3@6.7.0/dist/d3.min.js"}
    page = (
        '<script src="https://d3js.org/d3.v6.min.js"></script>'
        '<script src="https://unpkg.com/new@9/x.js"></script>'
        '<script src="/ui/static/js/map-init.js?v=1"></script>'
    )
    unknown: set[str] = set()
    out = offline.rewrite(page, urls, unknown)
    assert 'src="/cariflex/ui-vendor/d3@6.7.0/dist/d3.min.js"' in out
    assert "https://unpkg.com/new@9/x.js" in out and unknown == {"https://unpkg.com/new@9/x.js"}
    assert 'map-init.js?v=1"></script><script src="/cariflex/ui/offline-map.js"></script>' in out
    assert "CDN address the plugin does not serve" in caplog.text
    offline.rewrite(page, urls, unknown)
    assert caplog.text.count("CDN address the plugin does not serve") == 1  # named once


@given(st.text())
def test_text_without_cdn_addresses_is_left_as_it_is(text):
    if offline.CDN_URL.search(text) or offline.MAP_INIT.search(text):
        return
    assert offline.rewrite(text, {}, set()) == text


def test_the_lock_file_is_valid_json_with_one_entry_per_cdn_address():
    lock = json.loads(vendor.LOCK_FILE.read_text())
    urls = [a["cdn_url"] for a in lock["assets"]]
    assert len(urls) == len(set(urls))
