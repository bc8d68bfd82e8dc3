"""Benchmark scripts, run as `python bench/<x>.py`; a package so tests can import
`bench.stats`."""
