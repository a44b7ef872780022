"""The operator console: one HTTP server in the service process for /metrics, /healthz, /readyz, the JSON
API under /api/v1, evidence files and the operator page (static assets shipped in the package).

Modules: ``auth`` (token / Basic auth off loopback), ``store`` (recent events and score history kept in
memory), ``sse`` (live feed with bounded per-client queues), ``api`` (the /api/v1 routes), ``app`` (the
Starlette application), ``server`` (uvicorn in its own thread). The console talks to the service only
through ``stream.control.ServiceControl`` and to the deployment file only through ``stream.reload``.
"""
