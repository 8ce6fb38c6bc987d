"""The OpenADR VEN bridge: VTN -> FlexMeasures, and the process that hosts the CEM.

What it is: an openleadr VEN (``ven``) whose decisions (``policy``) become durable posts to the
Cariflex plugin's API (``outbox``, ``poster``, ``fm_client``), DR verification reports
(``dr_report``), and the ``cariflex-ven`` entry point (``cli``), which also runs the CEM package.

May import: ``cariflex`` and ``cem``; never the plugin or FlexMeasures (it speaks to them over
HTTP only).

Contract files: ``cariflex/contracts/openadr_event.py`` (the normalised event it posts and keeps
for the CEM), ``cariflex/contracts/fleet_schedule.py`` (what it fetches for the CEM).
"""

__version__ = "0.1.0"
