"""The FastAPI application: :func:`create_app` wires the database (migrated on creation), the Slurm
handle, the notifier, the stats and the routes, and runs the background loops (held-job watchdog,
notification delivery) for the app's lifetime. The Slurm handle and the clock are injected, so tests
pass a fake Slurm and a fake clock; the CLI builds the real ones.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from ajr_supervisor import __version__
from ajr_supervisor.registry import api
from ajr_supervisor.registry.actions import SlurmAccess
from ajr_supervisor.registry.auth import TokenCache
from ajr_supervisor.registry.db import Database, migrate
from ajr_supervisor.registry.delivery import Notifier
from ajr_supervisor.registry.ingest import GroupWriter
from ajr_supervisor.registry.settings import Settings
from ajr_supervisor.registry.stats import Stats
from ajr_supervisor.registry.watchdog import Watchdog

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What the routes and loops share (``app.state.ctx``)."""

    settings: Settings
    db: Database
    clock: Callable[[], float]
    access: SlurmAccess
    notifier: Notifier
    stats: Stats
    watchdog: Watchdog
    tokens: TokenCache
    writer: GroupWriter


def create_app(settings: Settings, *, slurm: Any = None, clock: Callable[[], float] = time.time,
               background: bool = True, sender: Callable[..., None] | None = None,
               db: Database | None = None) -> FastAPI:
    """The registry app. ``slurm``: a Slurm handle, or a mapping of cluster name to one (None: actions
    fail with a clear error). ``background``: run the watchdog and delivery loops while the app runs.
    ``sender`` replaces :func:`ajr_supervisor.registry.notify.send` (tests)."""
    db = db or Database(settings.db)
    migrate(db)
    notifier = Notifier(settings, clock=clock, sender=sender)
    notifier.seed(db)
    access = SlurmAccess(slurm)
    context = Context(settings=settings, db=db, clock=clock, access=access, notifier=notifier,
                      stats=Stats(db, settings, clock=clock),
                      watchdog=Watchdog(db, access, held_timeout_s=settings.held_timeout_s, clock=clock,
                                        planner=notifier),
                      tokens=TokenCache(db, settings.token_cache_s),
                      writer=GroupWriter(db, clock=clock, planner=notifier))

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        # What exists now (modules, the app, the engines: most of the heap) lives as long as the
        # service: take it out of the cyclic GC's scans, or every full collection walks it all (tens of
        # ms during which no request moves: the ingest p99). Given back to the GC at shutdown.
        gc.collect()
        gc.freeze()
        tasks = []
        if background:
            tasks = [asyncio.create_task(run_periodically("watchdog", context.watchdog.run_once,
                                                          settings.watchdog_interval_s)),
                     asyncio.create_task(run_periodically("delivery", lambda: notifier.deliver_due(db),
                                                          settings.delivery_interval_s))]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.to_thread(context.writer.close)
            gc.unfreeze()

    docs = settings.docs_open
    app = FastAPI(title="ajr registry", version=__version__, lifespan=lifespan,
                  description="The central registry of ajr-supervisor: events, jobs, actions, KPIs, nodes.",
                  docs_url="/docs" if docs else None, redoc_url=None, openapi_url="/openapi.json" if docs else None)
    app.state.ctx = context
    app.include_router(api.router)

    @app.exception_handler(OperationalError)
    async def _db_down(_request: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database error: %s", " ".join(str(exc.orig or exc).split())[:300])
        return JSONResponse({"detail": "the registry's database is unavailable; retry later"}, status_code=503)

    return app


async def run_periodically(name: str, step: Callable[[], Any], interval_s: float) -> None:
    """Run ``step`` in a thread every ``interval_s``, logging (never raising) its failures, until cancelled."""
    while True:
        try:
            await asyncio.to_thread(step)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: this pass failed; trying again in %g s", name, interval_s)
        await asyncio.sleep(interval_s)
