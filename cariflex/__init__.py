"""The pure core of Cariflex EMS: what every arrow of the data flow shares.

What it is: the fleet description and its one loader (``fleet``), the site model and units
(``site_model``), flexibility arithmetic (``flexibility``), solar geometry and PV on pvlib
(``solar``), the base-load profile and forecast (``load_profile``), settings (``settings``), safe
JSON input (``json_input``), logging (``logs``), the S2 translator and checks (``s2``), PostgreSQL
URLs (``database_url``), the input rules (hours, since, period, tariff, durations) shared by APIs
and CLIs (``inputs``) and the wire contracts (``contracts``).

May import: the standard library and third-party libraries only. It imports none of the other
Cariflex packages (import-linter contract "core imports none of the others"), so every image can
carry it.

Contract files: ``cariflex/contracts/`` (one module per arrow between processes).
"""

__version__ = "0.1.0"
