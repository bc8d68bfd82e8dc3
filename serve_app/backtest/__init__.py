"""`rtcts backtest`: replay a trace through the pricing core in simulated time (no Ray).

Modules, one job each: `trace` (CSV traces), `workload` (compression, tenants and plans,
the spike), `replica` and `deployment` (the simulated cluster: batching, queueing, cold
starts, failures, Serve-like autoscaling via `autoscale`), `strategies` (the policies
compared: static, allocated, incremental), `windows` (rolling realized margins),
`charges` (bills), `replay` (the event loop), `ledger` (the minute table).
"""
