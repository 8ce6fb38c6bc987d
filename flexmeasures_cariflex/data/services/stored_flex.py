"""The site's flex-context and its devices' flex-models as FlexMeasures stores them: what the
Cariflex scheduler reads, so that FlexMeasures' UI and API show the very limits the fleet is
planned with (one source of truth; setup writes them from the fleet file).

Fixed quantities ("50 kW", "90%") and sensor references ({"sensor": 12}) are read; a field that
is missing or cannot be read refuses the schedule (``ScheduleRefused``) with the asset and field
named, before anything is computed or written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flexmeasures.data import db
from flexmeasures.data.models.generic_assets import GenericAsset
from flexmeasures.utils.unit_utils import ur
from pint.errors import PintError
from sqlalchemy import select

from cariflex.fleet import Fleet
from flexmeasures_cariflex.data.services.schedule_errors import ScheduleRefused

SETUP_HINT = "run `flexmeasures cariflex setup` to write it from the fleet file"


@dataclass
class StoredFlex:
    """``context``: the site's flex-context; ``models``: each battery's and EV charger's flex-model."""

    site: str
    context: dict[str, Any]
    models: dict[str, dict[str, Any]]

    def context_quantity(self, key: str, unit: str) -> float:
        return quantity(self.context, key, unit, f"the flex-context of site '{self.site}'")

    def context_sensors(self, key: str) -> list[int]:
        """The sensor ids of a list field (inflexible devices); absent: none."""
        value = self.context.get(key) or []
        if not isinstance(value, list) or not all(_sensor_id(item) is not None for item in value):
            raise ScheduleRefused(
                f"the flex-context of site '{self.site}' has '{key}' {_short(value)}: "
                'expected a list of sensor references like [{"sensor": 12}]'
            )
        return [_sensor_id(item) for item in value]

    def context_sensor(self, key: str) -> int:
        return sensor_ref(self.context, key, f"the flex-context of site '{self.site}'")

    def quantity(self, device: str, key: str, unit: str) -> float:
        return quantity(self.models[device], key, unit, f"the flex-model of asset '{device}'")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _sensor_id(value: Any) -> int | None:
    if (
        isinstance(value, dict)
        and isinstance(value.get("sensor"), int)
        and not isinstance(value["sensor"], bool)
    ):
        return value["sensor"]
    return None


def quantity(fields: dict[str, Any], key: str, unit: str, where: str) -> float:
    """A fixed quantity field in ``unit`` ("22 kW" -> 22.0; "0.05 MW" in kW -> 50.0)."""
    if key not in fields:
        raise ScheduleRefused(f"{where} has no '{key}'; {SETUP_HINT}")
    value = fields[key]
    try:
        if not isinstance(value, str):
            raise TypeError
        return float(ur.Quantity(value).to(unit).magnitude)
    except (TypeError, ValueError, AttributeError, AssertionError, PintError):
        raise ScheduleRefused(
            f"{where} has '{key}' {_short(value)}: expected a fixed quantity in {unit} like '10 {unit}'"
        ) from None


def sensor_ref(fields: dict[str, Any], key: str, where: str) -> int:
    if key not in fields:
        raise ScheduleRefused(f"{where} has no '{key}'; {SETUP_HINT}")
    found = _sensor_id(fields[key])
    if found is None:
        raise ScheduleRefused(
            f"{where} has '{key}' {_short(fields[key])}: expected a sensor reference like {{\"sensor\": 12}}"
        )
    return found


def read_stored_flex(fleet: Fleet, site: GenericAsset) -> StoredFlex:
    """The site's flex-context and the flex-models of the fleet's batteries and EV chargers (one query)."""
    devices = {d.name for d in (*fleet.batteries, *fleet.ev_chargers)}
    rows = db.session.execute(
        select(GenericAsset.name, GenericAsset.flex_model).filter(
            GenericAsset.parent_asset_id == site.id, GenericAsset.name.in_(devices)
        )
    ).all()
    models = {name: dict(model or {}) for name, model in rows}
    lacking = sorted(devices - set(models))
    if lacking:
        raise ScheduleRefused(f"asset(s) {', '.join(lacking)} missing below site '{site.name}'; {SETUP_HINT}")
    return StoredFlex(site.name, dict(site.flex_context or {}), models)
