"""The registry's services, by the names `modelreg run NAME`, `up` and `stack up` start.

A module of its own so that the commands which start services (`stack`, `demo`, `up`) need
not import `main`, which imports them.
"""

SERVICES = ("ingest", "validation", "promotion", "archival", "audit", "webhooks", "api")
