"""fleet: the client library the sending fleet imports to follow repmon's decisions. Empty for
now."""
