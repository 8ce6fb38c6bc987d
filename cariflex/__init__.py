"""Shared core of Cariflex EMS: settings, the fleet description and its loader.

Nothing here imports FlexMeasures, so the VTN and VEN images can use it without it.
"""

__version__ = "0.1.0"
