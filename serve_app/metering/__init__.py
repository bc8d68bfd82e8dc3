"""Verified meters: built when a request ends, handed to a sink (the Redis stream later)."""

from serve_app.metering.meter import MemorySink, Meter, MeterSink, new_meter_id

__all__ = ["MemorySink", "Meter", "MeterSink", "new_meter_id"]
