"""The central registry: ``ajr registry serve`` receives the events every supervisor and epilog sends,
keeps them with a per-job projection (jobs, attempts), and serves them back over an HTTP API.

Module map (the outside world is touched only where noted):

- :mod:`.settings`  the service config (YAML file; reads the file)
- :mod:`.models`    the tables (SQLAlchemy Core), :mod:`.db` engines, sessions and Alembic migrations
- :mod:`.auth`      bearer tokens (hashed at rest) and roles
- :mod:`.ingest`    validation, idempotent storage and the projection, one transaction per request
- :mod:`.queries`   reads: jobs, attempts, events, audit, notifications, KPIs, nodes, metrics snapshot
- :mod:`.actions`   admin actions through :class:`ajr_supervisor.slurm.Slurm` (changes the cluster), audited
- :mod:`.watchdog`  releases jobs left requeue-held too long (changes the cluster)
- :mod:`.delivery`  sends pending notifications through their channels (talks to mail/webhooks)
- :mod:`.api`       the HTTP routes, :mod:`.app` the FastAPI factory and background loops
"""
