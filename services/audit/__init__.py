"""audit: the append-only, hash-chained log of every `registry.audit` record."""
