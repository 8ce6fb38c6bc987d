"""The OpenADR 2.0b VTN: the grid operator's side (operator -> VTN -> VENs).

What it is: openleadr's VTN behind our own edge (``openadr_edge``), the event model and its checks
(``events``), the operator's actions (``actions``) shared by the CLI (``cli``) and the admin API
(``admin_api``), and its store (``store``).

May import: ``cariflex`` (the core) only; never the plugin, FlexMeasures, the VEN or the CEM.

Contract files: the OpenADR 2.0b schema on the wire (openleadr's XSD, checked at the edge);
``cariflex/inputs.py`` for operator input rules.
"""

__version__ = "0.1.0"
