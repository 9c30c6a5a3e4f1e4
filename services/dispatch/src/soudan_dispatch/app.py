"""Composition root of dispatch: the only service that talks to the LINE Messaging API.

Resources, created in the running loop and closed on shutdown in reverse order: the store (with
dispatch's indexes), the LINE client (:mod:`soudan_dispatch.line`), the bus with two consumers
(``SendText`` in order per user → :class:`~soudan_dispatch.sending.Sender`; ``StartBroadcast`` one
at a time → :class:`~soudan_dispatch.broadcasts.Broadcaster`; ``MarkRead`` and ``StartLoading``
in order per user → :class:`~soudan_dispatch.chat.Chat`), the broadcast schedule
(:mod:`soudan_dispatch.schedule`) and the rich menu keeper
(:class:`~soudan_dispatch.richmenu.RichMenuKeeper`, beside readiness, never holding it up).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from soudan_shared.bus import Bus
from soudan_shared.config import SoudanConfig
from soudan_shared.config_store import ConfigSource
from soudan_shared.contracts import MarkRead, SendText, StartBroadcast, StartLoading, utcnow
from soudan_shared.http import REGISTRY, add_readiness_check, create_base_app
from soudan_shared.records import INDEXES as RECORD_INDEXES
from soudan_shared.runtime import BUS, FACTS, STORE, use_bus, use_store
from soudan_shared.topology import (
    BROADCAST_QUEUE,
    LOADING_QUEUE,
    MARK_READ_QUEUE,
    SEND_TEXT_QUEUE,
)

from soudan_dispatch import broadcasts, sending
from soudan_dispatch.broadcasts import Broadcaster
from soudan_dispatch.chat import Chat, RecentSends
from soudan_dispatch.line import LineClient, TokenSource
from soudan_dispatch.quota import BudgetWatcher
from soudan_dispatch.richmenu import RichMenuKeeper
from soudan_dispatch.schedule import Scheduler
from soudan_dispatch.sending import Backoff, Sender
from soudan_dispatch.settings import DispatchSettings
from soudan_dispatch.tokens import TokenIssuer

SERVICE = "dispatch"

LINE: web.AppKey[LineClient] = web.AppKey("line", LineClient)
SENDER: web.AppKey[Sender] = web.AppKey("sender", Sender)
BROADCASTER: web.AppKey[Broadcaster] = web.AppKey("broadcaster", Broadcaster)
CHAT: web.AppKey[Chat] = web.AppKey("chat", Chat)
SCHEDULER: web.AppKey[Scheduler] = web.AppKey("scheduler", Scheduler)
TOKEN_ISSUER: web.AppKey[TokenIssuer] = web.AppKey("token_issuer", TokenIssuer)
RICH_MENU: web.AppKey[RichMenuKeeper] = web.AppKey("rich_menu", RichMenuKeeper)
BUDGET_WATCHER: web.AppKey[BudgetWatcher] = web.AppKey("budget_watcher", BudgetWatcher)


def token_source(settings: DispatchSettings) -> TokenSource:
    if settings.issues_tokens:
        return TokenSource("")  # sends wait for the first token dispatch issues
    return TokenSource(
        settings.line_channel_access_token.get_secret_value(),
        settings.line_channel_access_token_file,
    )


def create_app(
    settings: DispatchSettings,
    *,
    config: SoudanConfig | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> web.Application:
    """Dispatch; ``clock`` (tests) is the time its sender measures reply tokens' age by."""
    app = create_base_app(SERVICE)
    use_store(
        app,
        settings,
        indexes=(*RECORD_INDEXES, *sending.INDEXES, *broadcasts.INDEXES),
    )
    backoff = Backoff(
        attempts=settings.send_max_attempts,
        first=settings.send_backoff_seconds,
        cap=settings.send_backoff_max_seconds,
    )

    async def line_ctx(app: web.Application) -> AsyncIterator[None]:
        line = LineClient(
            settings.line_api_base_url,
            settings.data_base_url(),
            token_source(settings),
            timeout=settings.line_request_timeout,
            connections=max(64, settings.broadcast_concurrency * 2),
        )
        app[LINE] = line
        yield
        await line.close()

    app.cleanup_ctx.append(line_ctx)

    def consumers(app: web.Application, bus: Bus) -> None:
        db = app[STORE].db
        recent = RecentSends()
        sender = Sender(
            app[LINE],
            db,
            app[FACTS],
            backoff=backoff,
            reply_token_max_age=settings.reply_token_max_age,
            clock=clock,
            began=recent.note,
        )
        chat = Chat(app[LINE], db, app[FACTS], recent=recent, backoff=backoff, clock=clock)
        watcher = BudgetWatcher(
            app[LINE],
            db,
            app[FACTS],
            reserve=settings.line_monthly_reserve,
            interval=settings.line_quota_check_interval,
            registry=app[REGISTRY],
            ready=bus.wait_started,
        )
        app[BUDGET_WATCHER] = watcher
        broadcaster = Broadcaster(
            app[LINE],
            db,
            app[FACTS],
            backoff=backoff,
            rate=settings.broadcast_rate,
            concurrency=settings.broadcast_concurrency,
            reserve=settings.line_monthly_reserve,
            after=watcher.refresh,
        )
        app[SENDER] = sender
        app[BROADCASTER] = broadcaster
        app[CHAT] = chat
        bus.consume(SEND_TEXT_QUEUE, SendText, sender.handle, ordering_key=lambda c: c.to)
        bus.consume(MARK_READ_QUEUE, MarkRead, chat.mark_read, ordering_key=lambda c: c.user_id)
        bus.consume(
            LOADING_QUEUE, StartLoading, chat.start_loading, ordering_key=lambda c: c.user_id
        )
        bus.consume(BROADCAST_QUEUE, StartBroadcast, broadcaster.handle, prefetch=1)

    use_bus(app, settings, SERVICE, consumers=consumers)

    def config_getter(app: web.Application) -> Callable[[], Awaitable[SoudanConfig]]:
        """The configuration in force: the YAML files overridden by the console's edits, re-read
        within seconds (a fixed one in tests)."""
        if config is not None:
            fixed = config

            async def get_fixed() -> SoudanConfig:
                return fixed

            return get_fixed
        return ConfigSource(settings.soudan_config_dir, app[STORE].db).get

    async def schedule_ctx(app: web.Application) -> AsyncIterator[None]:
        scheduler = Scheduler(
            app[BUS],
            app[STORE].db,
            config_getter(app),
            interval=settings.broadcast_schedule_interval,
        )
        app[SCHEDULER] = scheduler
        task: asyncio.Task[None] | None = None
        if settings.broadcast_schedule:
            task = asyncio.create_task(scheduler.run_forever(), name="broadcast-schedule")
        yield
        await _stop(task)

    async def richmenu_ctx(app: web.Application) -> AsyncIterator[None]:
        keeper = RichMenuKeeper(
            app[LINE],
            config_getter(app),
            app[STORE].db,
            app[FACTS],
            font=settings.richmenu_font,
            check_interval=settings.richmenu_check_interval,
            backoff_first=settings.richmenu_backoff_seconds,
            backoff_cap=settings.richmenu_backoff_max_seconds,
            ready=app[BUS].wait_started,
        )
        app[RICH_MENU] = keeper
        task = asyncio.create_task(keeper.run_forever(), name="rich-menu")
        yield
        await _stop(task)

    async def budget_ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(app[BUDGET_WATCHER].run_forever(), name="line-budget")
        yield
        await _stop(task)

    app.cleanup_ctx.append(schedule_ctx)
    app.cleanup_ctx.append(budget_ctx)
    if settings.richmenu_auto:
        app.cleanup_ctx.append(richmenu_ctx)
    if settings.issues_tokens:
        app.cleanup_ctx.append(_token_ctx(settings))
    add_readiness_check(app, "line_client", lambda: LINE in app)
    return app


async def _stop(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _token_ctx(settings: DispatchSettings) -> Any:
    """Issue and renew v2.1 tokens (:mod:`soudan_dispatch.tokens`) while the service runs."""

    async def token_ctx(app: web.Application) -> AsyncIterator[None]:
        assert settings.line_channel_id
        assert settings.line_assertion_key_id
        assert settings.line_channel_secret
        assert settings.line_assertion_signing_key
        issuer = TokenIssuer(
            base_url=settings.line_api_base_url,
            channel_id=settings.line_channel_id,
            channel_secret=settings.line_channel_secret.get_secret_value(),
            signing_key_jwk=settings.line_assertion_signing_key.get_secret_value(),
            key_id=settings.line_assertion_key_id,
            store_db=app[STORE].db,
            facts=app[FACTS],
            tokens=app[LINE].tokens,
            lifetime=timedelta(days=settings.line_token_lifetime_days),
            renew_before=timedelta(days=settings.line_token_renew_before_days),
            timeout=settings.line_request_timeout,
            ready=app[BUS].wait_started,
        )
        app[TOKEN_ISSUER] = issuer
        task = asyncio.create_task(issuer.run_forever(), name="line-token")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await issuer.close()

    return token_ctx
