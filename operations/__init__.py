"""Operations: what starts Cariflex EMS and looks after it.

What it is: ``make demo``'s whole chain (``demo``), the FlexMeasures server/worker launcher of the
compose stack (``launch``), backups (``backup``) and database administration (``database``).

May import: every other Cariflex package. Nothing imports it (import-linter contract): it is the
top of the layering, reached only through entry points (``cariflex-demo``, ``python -m
operations.launch``, ``python -m operations.backup``), the tests and the benchmarks.

Contract files: none of its own; it wires the processes whose contracts live in
``cariflex/contracts/``.
"""
