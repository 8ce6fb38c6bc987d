"""S2 FRBC, shared by the CEM (ven_bridge) and the simulated resource managers: device
descriptions, semantic validation s2-python does not do, and the kW → (mode, factor) translator."""
