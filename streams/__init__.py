"""repmon streams: all I/O. ``worker/`` (the Faust app, topics, metrics, web views),
``cli/`` (one module per ``repmon`` verb), ``adapters/`` (log and webhook formats), ``fleet/``
(the client the sending fleet imports). streams imports models, never the reverse.
"""
