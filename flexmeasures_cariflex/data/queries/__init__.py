"""Reads of the FlexMeasures database that more than one service (or Grafana) needs.

``site``: the site's assets, sensors and data sources by name. ``latest_beliefs``: the one definition
of "what the database believes now" (the latest belief per sensor and event), as SQL text and as
Python functions.
"""
