"""Plotting: functions return matplotlib Axes."""

__all__: list[str] = []
