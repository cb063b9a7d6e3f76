"""worker: the Faust app (ingest task, rollup agent, tick timer), its topics, settings,
Prometheus metrics and web views."""
