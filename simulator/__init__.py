"""Simulated S2 resource managers for the Cariflex fleet (10 batteries, 10 EV chargers).

- ``simulator.devices``: the physics of one device (fill level, power, modes), no I/O;
- ``simulator.rm``: one S2 resource manager per device over its own WebSocket to the CEM, built on
  s2-python's RM connection core; ``start_fleet`` / ``run_fleet`` run many in one asyncio loop;
- ``simulator.cli``: the ``cariflex-sim`` entry point (``python -m simulator.cli run``).

May import: ``cariflex`` only; never the CEM, the VEN, the plugin or FlexMeasures (it talks to the
CEM over S2 WebSockets like any other resource manager).

Contract files: ``cariflex/contracts/s2_device.py``; the S2 messages are s2-python's models.
"""

from simulator.devices import SimDevice, build_devices
from simulator.rm import SimulatedFleet, SimulatedRM, run_fleet, start_fleet

__all__ = ["SimDevice", "SimulatedFleet", "SimulatedRM", "build_devices", "run_fleet", "start_fleet"]
