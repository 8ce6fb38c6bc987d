"""Meter ingestion: readings over MQTT (QoS 1) into FlexMeasures' ``timed_belief``, in batches.

Arrow: meters and gateways -> MQTT broker -> this service -> PostgreSQL. The contract (topics,
payload) is ``cariflex/contracts/meter_reading.py``. ``store`` talks to the database (the meter
sensors by name, a data source per gateway, one COPY per batch); ``service`` to the broker
(subscription, acknowledgements after the commit, the dead-letter topic); ``cli`` is the entry
point ``cariflex-ingest``.

Imports no FlexMeasures code: it writes FlexMeasures' tables with SQL (the plugin's rollup and
alert triggers run in the same transaction), so its image needs neither FlexMeasures nor the
plugin.
"""
