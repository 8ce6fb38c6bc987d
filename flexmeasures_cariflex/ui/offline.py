"""Serve FlexMeasures' CDN assets from this server and point its pages and style sheet at them.

FlexMeasures 1.0.1's templates and ``flexmeasures.css`` load Bootstrap, Vega, Leaflet, DataTables,
fonts ... from public CDNs; with no internet (an island control room during an outage) its UI is
an unstyled page without charts. Rather than copies of FlexMeasures' templates (which would drift
from the installed version), every HTML page and style sheet FlexMeasures answers with is rewritten
on the way out: each CDN address found in ``vendor.lock.json`` becomes its local copy under
``/cariflex/ui-vendor/`` (fetched at install time, see ``vendor.py``). The map's tiles come from
Mapbox: ``offline-map.js`` replaces FlexMeasures' ``addTileLayer`` with a plain local background,
so maps show their markers. FlexMeasures' logos (from the LF Energy artwork site) are served as
small local SVGs.

A CDN address not in the lock (a FlexMeasures upgrade) is left as it is and logged once; the
browser test (tests/e2e/test_ui_offline.py) fails on it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from flask import Blueprint, Flask, Response, send_from_directory

from flexmeasures_cariflex.ui.vendor import URL_PREFIX, assets, vendor_dir

log = logging.getLogger("cariflex.ui")

STATIC = Path(__file__).parent / "static"
OWN_PREFIX = "/cariflex/ui"
CDN_URL = re.compile(
    r"https?://(?:ajax\.aspnetcdn\.com|cdn\.jsdelivr\.net|unpkg\.com|cdnjs\.cloudflare\.com|cdn\.datatables\.net|d3js\.org"
    r"|fonts\.gstatic\.com|artwork\.lfenergy\.org|api\.mapbox\.com|api\.iconify\.design)/[^\"'()\s<>]*"
)
LOGOS = {
    "https://artwork.lfenergy.org/projects/flexmeasures/horizontal/white/flexmeasures-horizontal-white.svg": (
        f"{OWN_PREFIX}/flexmeasures-horizontal-white.svg"
    ),
    "https://artwork.lfenergy.org/projects/flexmeasures/icon/white/flexmeasures-icon-white.svg": (
        f"{OWN_PREFIX}/flexmeasures-icon-white.svg"
    ),
}
MAP_INIT = re.compile(r"(<script[^>]+js/map-init\.js[^>]*></script>)")
REWRITTEN_TYPES = frozenset({"text/html", "text/css"})

ui_bp = Blueprint("cariflex_ui", __name__)


def local_urls() -> dict[str, str]:
    """CDN address -> local address, for the assets that are on disk (and the shipped logos)."""
    folder = vendor_dir()
    found = {
        a.cdn_url: a.local_url for a in assets() if (folder / f"{a.package}@{a.version}" / a.path).is_file()
    }
    return {**found, **LOGOS}


@ui_bp.route(f"{URL_PREFIX}/<path:filename>")
def vendored(filename: str) -> Response:
    response = send_from_directory(vendor_dir(), filename, max_age=365 * 24 * 3600)
    return response


@ui_bp.route(f"{OWN_PREFIX}/<path:filename>")
def own(filename: str) -> Response:
    return send_from_directory(STATIC, filename, max_age=24 * 3600)


def rewrite(text: str, urls: dict[str, str], unknown: set[str]) -> str:
    """Every known CDN address in ``text`` replaced by its local one; the map's tiles made local."""

    def local(match: re.Match) -> str:
        url = match.group(0)
        if url in urls:
            return urls[url]
        if url not in unknown and not url.startswith("https://api.mapbox.com/"):
            unknown.add(url)
            log.warning(
                "FlexMeasures refers to a CDN address the plugin does not serve",
                extra={"fields": {"url": url[:200]}},
            )
        return url

    text = CDN_URL.sub(local, text)
    return MAP_INIT.sub(lambda m: m.group(1) + f'<script src="{OWN_PREFIX}/offline-map.js"></script>', text)


@ui_bp.record_once
def _install(state) -> None:
    app: Flask = state.app
    urls = local_urls()
    missing = [a.cdn_url for a in assets() if a.cdn_url not in urls]
    if missing:
        log.warning(
            "UI assets missing: FlexMeasures' pages load them from the internet "
            "(run `python -m flexmeasures_cariflex.ui.vendor fetch`)",
            extra={"fields": {"missing": len(missing), "folder": str(vendor_dir())}},
        )
    unknown: set[str] = set()

    @app.after_request
    def _offline(response: Response) -> Response:
        if response.status_code != 200 or response.mimetype not in REWRITTEN_TYPES:
            return response
        if response.is_streamed and not response.direct_passthrough:
            return response
        response.direct_passthrough = False  # a static file (flexmeasures.css): read it to rewrite it
        text = response.get_data(as_text=True)
        changed = rewrite(text, urls, unknown)
        if changed != text:
            response.set_data(changed)
            response.headers.pop("ETag", None)  # the file's; no longer what is sent
        return response
