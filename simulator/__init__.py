"""Simulated S2 resource managers for the Cariflex fleet (10 batteries, 10 EV chargers) and the
site's meters (10 PV sites and the base load, NOT_CONTROLABLE).

- ``simulator.devices``: the physics of one device (fill level, power, modes), no I/O;
- ``simulator.site``: PV production in "actual" weather (pvlib, as the plan) and the base load
  with seeded noise, as meters read them, no I/O;
- ``simulator.transport``: the RM's WebSocket and S2 connection, s2-python's connection core plus
  what it leaves to the application (exactly one ReceptionStatus per message, CA file, close codes);
- ``simulator.adapters``: the S2 control types an RM offers (FRBC, NO_SELECTION; NOT_CONTROLABLE
  for a meter) on s2-python's ``ResourceManagerHandler``, and the messages that report a device's
  or a meter's state;
- ``simulator.runner``: one S2 resource manager per device over its own WebSocket to the CEM
  (``SimulatedRM``: instructions, reconnection, pairing) and per meter (``MeteredRM``), both on
  one ``ResourceManager``; ``start_fleet`` / ``run_fleet`` run many in one asyncio loop;
- ``simulator.cli``: the ``cariflex-sim`` entry point (``python -m simulator.cli run``).

May import: ``cariflex`` only; never the CEM, the VEN, the plugin or FlexMeasures (it talks to the
CEM over S2 WebSockets like any other resource manager).

Contract files: ``cariflex/contracts/s2_device.py``; the S2 messages are s2-python's models.
"""

from simulator.devices import SimDevice, build_devices
from simulator.runner import MeteredRM, ResourceManager, SimulatedFleet, SimulatedRM, run_fleet, start_fleet
from simulator.site import SimMeter, build_meters

__all__ = [
    "MeteredRM",
    "ResourceManager",
    "SimDevice",
    "SimMeter",
    "SimulatedFleet",
    "SimulatedRM",
    "build_devices",
    "build_meters",
    "run_fleet",
    "start_fleet",
]
