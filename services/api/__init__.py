"""api: the registry's HTTP API and web UI over the read model (view tables and audit log).

`modelreg run api` serves, on one port:
  /api/v1/...     the JSON API (reads from PostgreSQL; writes only publish events: 202 + event id)
  /openapi.json   its OpenAPI 3.1 document; errors are RFC 9457 problem details
  /               the web UI (server-rendered, follows new events by polling /ui/state)

Settings (environment, beside the shared ones in `shared.settings`):
  MODELREG_API_HOST             interface to listen on (default 127.0.0.1; 0.0.0.0 in a container)
  MODELREG_API_PORT             port (default 8080; 0 picks a free one)
  MODELREG_API_OPEN_READS       true (default): reads need no token; false: every read, the UI's
                                too, needs a token of role reader or better
  MODELREG_API_PRESIGN_SECONDS  how long presigned artifact URLs stay valid (default 900)

Writes need a bearer token (`modelreg token create --role R --name N [--models GLOBS]
[--expires 90d]`): publisher registers versions, evaluator reports QA results, approver requests
promotions (the token's name is the actor), admin may do everything. A token works only for the
models its globs match (403 otherwise) and until it expires (401 after). `app.create_app(settings)` builds the service;
`app.build_asgi(settings)` the ASGI app alone, for tests.
"""
