"""Checks on a running VTN shared by the edge tests and the fuzz campaign: alive, and what its store holds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import requests
from sqlalchemy import create_engine, inspect, text

from tests.helpers.openadr_harness import VtnProcess
from vtn.events import SITE_TZ

TOMORROW = (datetime.now(UTC).astimezone(SITE_TZ) + timedelta(days=1)).replace(
    hour=0, minute=0, second=0, microsecond=0
)


def rows(store_url: str) -> dict[str, int]:
    """Row count of every table of the VTN store, and the registrations, to prove nothing changed."""
    engine = create_engine(store_url)
    try:
        with engine.connect() as connection:
            out = {
                name: connection.execute(text(f'SELECT count(*) FROM "{name}"')).scalar_one()
                for name in inspect(connection).get_table_names()
            }
            out["registrations"] = sorted(
                str(r) for r in connection.execute(text("SELECT registration_id FROM vtn_ven")).scalars()
            )
            return out
    finally:
        engine.dispose()


def assert_alive(vtn: VtnProcess) -> None:
    assert vtn.proc.poll() is None, "the VTN process died"
    assert requests.get(f"{vtn.admin_url}/health", timeout=10).json()["status"] == "ok"


REPORTS_WITHOUT_VEN_ID = {
    "oadrUpdateReport": '<oadr:oadrUpdateReport ei:schemaVersion="2.0b"><pyld:requestID>u1</pyld:requestID>'
    "</oadr:oadrUpdateReport>",
    "oadrRegisterReport": '<oadr:oadrRegisterReport ei:schemaVersion="2.0b">'
    "<pyld:requestID>r1</pyld:requestID></oadr:oadrRegisterReport>",
    "oadrCreatedReport": '<oadr:oadrCreatedReport ei:schemaVersion="2.0b"><ei:eiResponse>'
    "<ei:responseCode>200</ei:responseCode><pyld:requestID>c1</pyld:requestID></ei:eiResponse>"
    "<oadr:oadrPendingReports/></oadr:oadrCreatedReport>",
    "oadrRegisteredReport": '<oadr:oadrRegisteredReport ei:schemaVersion="2.0b"><ei:eiResponse>'
    "<ei:responseCode>200</ei:responseCode><pyld:requestID>g1</pyld:requestID></ei:eiResponse>"
    "</oadr:oadrRegisteredReport>",
}
