"""What every service serves over HTTP: ``/healthz``, ``/readyz`` and Prometheus ``/metrics``.

``/healthz`` answers while the process runs; ``/readyz`` answers 200 only while every readiness
check passes (the broker connected, the store reachable) and 503 with the failing names
otherwise. Each service has its own metrics registry, so five services in one process
(``soudan-all``) still report separately.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import hdrs, web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ReadinessCheck = Callable[[], Awaitable[bool] | bool]

REGISTRY: web.AppKey[CollectorRegistry] = web.AppKey("registry", CollectorRegistry)
READINESS: web.AppKey[dict[str, ReadinessCheck]] = web.AppKey("readiness", dict)
SERVICE: web.AppKey[str] = web.AppKey("service", str)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


def create_base_app(
    service: str,
    *,
    client_max_size: int = 1024**2,
    trusted_proxies: Sequence[IPNetwork] = (),
) -> web.Application:
    """An aiohttp app with the three operational routes and request metrics.

    ``trusted_proxies``: the networks of the reverse proxies in front of the service. A request
    whose socket peer is one of them has ``request.remote`` taken from ``X-Forwarded-For``
    instead (see :func:`forwarded_client`); from anyone else the header is ignored, since
    anyone can send it.
    """
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

    middlewares = [measure]
    if trusted_proxies:
        middlewares.insert(0, _forwarded_middleware(tuple(trusted_proxies)))
    app = web.Application(middlewares=middlewares, client_max_size=client_max_size)
    app[REGISTRY] = registry
    app[READINESS] = {}
    app[SERVICE] = service
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


def forwarded_client(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[IPNetwork]
) -> str | None:
    """The client's address behind trusted proxies: the right-most ``X-Forwarded-For`` entry
    that is not itself a trusted proxy (each proxy appends the address it received from).

    ``peer`` unchanged when it is not a trusted proxy, or when the header is missing or holds
    something that is not an address (a misconfigured proxy should not erase the evidence).
    """
    if not _is_trusted(peer, trusted):
        return peer
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",")]
    client = peer
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer
        client = hop
        if not _is_trusted(hop, trusted):
            break
    return client


def _is_trusted(address: str | None, trusted: Sequence[IPNetwork]) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def _forwarded_middleware(trusted: tuple[IPNetwork, ...]) -> Any:
    @web.middleware
    async def forwarded(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        client = forwarded_client(
            request.remote, request.headers.getall(hdrs.X_FORWARDED_FOR, []), trusted
        )
        if client is not None and client != request.remote:
            request = request.clone(remote=client)
        return await handler(request)

    return forwarded


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
