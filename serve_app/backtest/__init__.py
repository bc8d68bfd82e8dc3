"""`rtcts backtest`: replay a trace through the pricing core in simulated time (no Ray).

Modules, one job each (docs/backtest.md): `trace` (CSV traces), `workload` (compression,
tenants and plans, the spike, the warm-up), `replica` and `deployment` (the simulated
cluster: batching, queueing, cold starts, failures, Serve-like autoscaling via
`autoscale`), `strategies` (the policies compared: static, allocated, incremental),
`windows` (rolling realized margins), `charges` (bills), `replay` (the event loop),
`ledger` and `summary` (the minute table, a policy's figures), `runner` (a whole
backtest), `report`, `html`, `charts`, `plot`, `svg`, `png`, `progress` (output) and
`command` (the CLI's options).
"""
