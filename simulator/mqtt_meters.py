"""The simulated site meters on MQTT: every PV site's and the base load's reading, once a second,
to ``cariflex/meters/<gateway>/<name>_meter`` (QoS 1; the contract is
``cariflex/contracts/meter_reading.py``), as a gateway on site would publish them. The meter
ingestion service stores them in FlexMeasures; the same meters keep reporting over S2 to the CEM,
which acts on them within seconds.

Values carry the sensors' sign: PV production positive, the base load consumption positive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from urllib.parse import unquote

import paho.mqtt.client as mqtt

from cariflex.contracts.meter_reading import broker_address, encode, topic
from cariflex.s2.meters import PV
from cariflex.site_model import meter_sensor
from simulator.site import SimMeter

log = logging.getLogger("cariflex.sim.mqtt")


class MeterPublisher:
    def __init__(self, url: str, meters: list[SimMeter], gateway: str = "simulator", period_s: float = 1.0):
        parsed, port = broker_address(url, "the MQTT URL")
        self.meters, self.gateway, self.period_s = meters, gateway, period_s
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"cariflex-sim-{gateway}")
        if parsed.username:
            self.client.username_pw_set(unquote(parsed.username), unquote(parsed.password or ""))
        self.client.reconnect_delay_set(1, 5)
        self.client.max_queued_messages_set(100_000)  # a broker away for a while: kept and sent later
        self.client.connect_async(parsed.hostname, port, keepalive=30)
        self.published = 0

    async def run(self, stop: asyncio.Event) -> None:
        self.client.loop_start()
        log.info("publishing meter readings", extra={"fields": {"meters": [m.name for m in self.meters]}})
        try:
            while not stop.is_set():
                for meter in self.meters:
                    kw = meter.sample() / 1000
                    value = -kw if meter.kind == PV else kw
                    self.client.publish(
                        topic(self.gateway, meter_sensor(meter.name)),
                        encode(round(value, 4), meter.clock()),
                        qos=1,
                    )
                    self.published += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.period_s)
        finally:
            self.client.loop_stop()
            self.client.disconnect()
