"""Beliefs for the insight tests: an hour index and a writer."""

from __future__ import annotations

import pandas as pd


def hour(utc: str, kw: float) -> pd.Series:
    """A whole hour of 1-minute readings at ``kw``."""
    start = pd.Timestamp(utc)
    return pd.Series(kw, index=pd.date_range(start, periods=60, freq="min"), dtype=float)


def store(fleet, values: dict[str, pd.Series], belief_time=None, source=("Simulator", "demo script")):
    from flexmeasures.data import db

    from flexmeasures_cariflex.data.queries.site import ensure_source, site_sensors
    from flexmeasures_cariflex.data.services.beliefs import insert_beliefs

    sensors = site_sensors(fleet)
    written = insert_beliefs({sensors[n]: s for n, s in values.items()}, ensure_source(*source), belief_time)
    db.session.commit()
    return written
