"""repmon streams: all I/O (Faust app, agents, topics, web views, CLI, Kafka producers)."""
