"""The pull-through cache: upstream registry client and the cache over the local store."""
