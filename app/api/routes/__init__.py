"""One router per resource: datasets, jobs, models, predict, and ops (health, readiness,
metrics, the web page). Handlers parse, call a service, and shape the answer."""
