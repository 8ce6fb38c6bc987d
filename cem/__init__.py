"""The CEM: schedule and limits -> S2 FRBC -> devices.

What it is: the S2 CEM WebSocket server (``server``) with pairing and tokens (``pairing``), the
schedule follower (``schedule_follower``) and the fleet controller that turns the schedule, the
operator's setpoints and OpenADR limits into S2 instructions (``fleet_control``). It runs inside
the VEN bridge's process and needs only the shapes in ``ports`` from it.

May import: ``cariflex`` only; never the VEN bridge, the plugin or FlexMeasures.

Contract files: ``cariflex/contracts/fleet_schedule.py`` (the schedule it follows),
``cariflex/contracts/openadr_event.py`` (the limits it obeys), ``cariflex/contracts/s2_device.py``
(device state and setpoints); S2 messages themselves are s2-python's models.
"""
