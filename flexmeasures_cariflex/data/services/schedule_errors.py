"""The one refusal of the fleet scheduler, apart so that every step of it can raise it."""


class ScheduleRefused(ValueError):
    """Input that cannot be scheduled (nothing is written)."""
