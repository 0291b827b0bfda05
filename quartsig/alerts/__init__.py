"""Alerts: rules users own, evaluated once per publication on the collector, delivered later."""
