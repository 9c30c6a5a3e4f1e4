"""What every service serves over HTTP: ``/healthz``, ``/readyz`` and Prometheus ``/metrics``.

``/healthz`` answers while the process runs; ``/readyz`` answers 200 only while every readiness
check passes (the broker connected, the store reachable) and 503 with the failing names
otherwise. Each service has its own metrics registry, so five services in one process
(``soudan-all``) still report separately.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

ReadinessCheck = Callable[[], Awaitable[bool] | bool]

REGISTRY: web.AppKey[CollectorRegistry] = web.AppKey("registry", CollectorRegistry)
READINESS: web.AppKey[dict[str, ReadinessCheck]] = web.AppKey("readiness", dict)
SERVICE: web.AppKey[str] = web.AppKey("service", str)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


def create_base_app(service: str, *, client_max_size: int = 1024**2) -> web.Application:
    """An aiohttp app with the three operational routes and request metrics."""
    registry = CollectorRegistry()
    requests = Counter(
        "soudan_http_requests",
        "HTTP requests by route and status",
        ["route", "status"],
        registry=registry,
    )
    latency = Histogram(
        "soudan_http_request_seconds",
        "HTTP request latency by route",
        ["route"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )

    @web.middleware
    async def measure(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        started = time.perf_counter()
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            if name not in ("/metrics", "/healthz", "/readyz"):
                requests.labels(name, str(status)).inc()
                latency.labels(name).observe(time.perf_counter() - started)

    app = web.Application(middlewares=[measure], client_max_size=client_max_size)
    app[REGISTRY] = registry
    app[READINESS] = {}
    app[SERVICE] = service
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


def add_readiness_check(app: web.Application, name: str, check: ReadinessCheck) -> None:
    app[READINESS][name] = check


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "service": request.app[SERVICE]})


async def _readyz(request: web.Request) -> web.Response:
    failing: list[str] = []
    for name, check in request.app[READINESS].items():
        try:
            result: Any = check()
            if asyncio.iscoroutine(result):
                result = await asyncio.wait_for(result, 3.0)
        except Exception:
            result = False
        if not result:
            failing.append(name)
    body = {"service": request.app[SERVICE], "ready": not failing, "failing": failing}
    return web.json_response(body, status=503 if failing else 200)


async def _metrics(request: web.Request) -> web.Response:
    payload = generate_latest(request.app[REGISTRY])
    return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})
