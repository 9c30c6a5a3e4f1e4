"""The LINE adapter: line-bot-sdk v3's async client, behind a small interface of our own.

:class:`LineClient` is created inside the running loop (the SDK's ``AsyncApiClient`` owns an
aiohttp session bound to it) and closed on shutdown. Every request carries a timeout
(``_request_timeout``; the SDK's own default is 300 s), the access token in force
(:class:`TokenSource`, read again per request, so a rotated token needs no restart), and, where
LINE allows one, an ``X-Line-Retry-Key``. Answers come back as :class:`LineResult` (LINE's
``x-line-request-id``); failures as :class:`LineError` with the status (0 for a timeout or a
connection failure), LINE's message, and whether trying again can help.

The SDK is configured with ``host=LINE_API_BASE_URL``, which overrides its per-operation hosts,
so the blob API (rich menu images, normally ``api-data.line.me``) gets its own client.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import aiohttp
import structlog
from linebot.v3.messaging import (  # type: ignore[import-untyped]
    ApiException,
    AsyncApiClient,
    AsyncMessagingApi,
    AsyncMessagingApiBlob,
    BroadcastRequest,
    Configuration,
    MarkMessagesAsReadByTokenRequest,
    MulticastRequest,
    PostbackAction,
    PushMessageRequest,
    QuickReply,
    QuickReplyItem,
    ReplyMessageRequest,
    RichMenuRequest,
    ShowLoadingAnimationRequest,
    TextMessage,
)
from soudan_shared.contracts import QuickReplyOption

log = structlog.get_logger(__name__)

RETRY_KEY_NAMESPACE = uuid.UUID("6f1c9b0e-3f4e-5c6a-9b1d-2a7e4c8d0f13")


def retry_key(*parts: str) -> str:
    """A UUID in LINE's format (8-4-4-4-12) for ``X-Line-Retry-Key``.

    A 32-digit hex id (``uuid4().hex``, the bus message id) is the UUID it spells, with dashes;
    anything else is hashed into a name-based UUID (uuid5), so the same parts give the same key.
    """
    if len(parts) == 1:
        try:
            return str(uuid.UUID(hex=parts[0]))
        except ValueError:
            pass
    return str(uuid.uuid5(RETRY_KEY_NAMESPACE, "\x1f".join(parts)))


@dataclass(frozen=True)
class LineResult:
    status: int
    request_id: str | None
    body: Any = None


class LineError(Exception):
    """LINE refused or did not answer. ``status`` 0: timeout or connection failure."""

    def __init__(
        self,
        endpoint: str,
        status: int,
        message: str,
        *,
        request_id: str | None = None,
        accepted_request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{endpoint}: {status or 'no answer'} {message}"[:300])
        self.endpoint = endpoint
        self.status = status
        self.message = message
        self.request_id = request_id
        self.accepted_request_id = accepted_request_id
        self.retry_after = retry_after
        self.attempts = 1

    @property
    def transient(self) -> bool:
        """Worth trying again later: no answer, 5xx, or a rate limit (not the monthly one)."""
        if self.status == 0 or self.status >= 500:
            return True
        return self.status == 429 and not self.monthly_limit

    @property
    def monthly_limit(self) -> bool:
        return self.status == 429 and "monthly limit" in self.message.lower()

    @property
    def invalid_reply_token(self) -> bool:
        return self.status == 400 and "reply token" in self.message.lower()


class TokenSource:
    """The channel access token in force.

    With ``path`` (``LINE_CHANNEL_ACCESS_TOKEN_FILE``) the file is the source: it is read again
    whenever its modification time or size changes (checked at most every ``check_every``
    seconds, and at once after a 401), so replacing the file rotates the token without a
    restart. With ``loader`` (the v2.1 tokens dispatch issues itself, kept in the store) the
    loader is asked after a 401. Otherwise the token given at start is used. :meth:`set`
    installs a token issued at run time.
    """

    def __init__(
        self,
        token: str,
        path: Path | None = None,
        *,
        check_every: float = 1.0,
        loader: Callable[[], Awaitable[str | None]] | None = None,
        wait: float = 30.0,
    ) -> None:
        self._token = token
        self._wait = wait
        self._path = path
        self._check_every = check_every
        self._checked = 0.0
        self._stamp: tuple[float, int] | None = None
        self.loader = loader
        self._present = asyncio.Event()
        if token:
            self._present.set()

    async def get(self) -> str:
        """The token, waiting (up to ``wait`` seconds) for the first one to be issued."""
        if not self._present.is_set():
            await asyncio.wait_for(self._present.wait(), self._wait)
        return self.current()

    def current(self) -> str:
        if self._path is not None and time.monotonic() - self._checked >= self._check_every:
            self.reread_file()
        return self._token

    async def refresh(self) -> bool:
        """After a 401: look for a newer token; True when the token changed."""
        if self.loader is not None:
            token = await self.loader()
            if token and token != self._token:
                self.set(token)
                return True
        return self.reread_file()

    def reread_file(self) -> bool:
        """Re-read the file if it changed; True when the token changed."""
        self._checked = time.monotonic()
        if self._path is None:
            return False
        try:
            stat = os.stat(self._path)
            stamp = (stat.st_mtime, stat.st_size)
            if stamp == self._stamp:
                return False
            token = self._path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            log.warning("token_file_unreadable", error=exc.strerror)
            return False
        self._stamp = stamp
        if not token or token == self._token:
            return False
        self._token = token
        log.info("line_token_reloaded", source="file")
        return True

    def set(self, token: str) -> None:
        if token != self._token:
            log.info("line_token_reloaded", source="issued")
        self._token = token
        self._present.set()


def text_messages(
    texts: Sequence[str], quick_reply: Sequence[QuickReplyOption] = ()
) -> list[TextMessage]:
    """Text messages only (運営要領 第5(1)); the quick reply goes on the last one."""
    messages = [TextMessage(text=text) for text in texts]
    if quick_reply:
        items = [
            QuickReplyItem(
                action=PostbackAction(
                    label=option.label, data=option.data, displayText=option.display_text
                )
            )
            for option in quick_reply
        ]
        messages[-1] = TextMessage(text=texts[-1], quickReply=QuickReply(items=items))
    return messages


T = TypeVar("T")


def _without_per_request_env_lookups(client: Any) -> Any:
    """The SDK's HTTP session has ``trust_env=True``: on every call aiohttp reads the proxy
    variables and ``~/.netrc`` (a file read in a worker thread, ~7 % of a busy dispatch). Read
    the proxy for LINE's host once, here, and give the session up for one that does not look."""
    rest = client.rest_client
    url = urlsplit(client.configuration.host)
    if rest.proxy is None and not proxy_bypass(url.hostname or ""):
        rest.proxy = getproxies().get(url.scheme)
    old = rest.pool_manager
    rest.pool_manager = aiohttp.ClientSession(connector=old.connector, trust_env=False)
    old.detach()  # the connector (and its pool of connections) now belongs to the new session
    return client


class LineClient:
    """The Messaging API calls dispatch makes."""

    def __init__(
        self,
        base_url: str,
        data_base_url: str,
        tokens: TokenSource,
        *,
        timeout: float = 10.0,
        connections: int = 64,
    ) -> None:
        self.tokens = tokens
        self.timeout = timeout
        self._config = Configuration(host=base_url.rstrip("/"), access_token=tokens.current())
        self._config.connection_pool_maxsize = connections
        self._data_config = Configuration(
            host=data_base_url.rstrip("/"), access_token=tokens.current()
        )
        self._client = _without_per_request_env_lookups(AsyncApiClient(self._config))
        self._data_client = _without_per_request_env_lookups(AsyncApiClient(self._data_config))
        self._api = AsyncMessagingApi(self._client)
        self._blob = AsyncMessagingApiBlob(self._data_client)

    async def close(self) -> None:
        await self._client.close()
        await self._data_client.close()

    async def _call(
        self, endpoint: str, call: Callable[[], Awaitable[Any]], *, retry_on_401: bool = True
    ) -> LineResult:
        try:
            token = await self.tokens.get()
            self._config.access_token = token
            self._data_config.access_token = token
            response = await call()
        except ApiException as exc:
            error = _error_from(endpoint, exc)
            if error.status == 401 and retry_on_401 and await self.tokens.refresh():
                return await self._call(endpoint, call, retry_on_401=False)
            raise error from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise LineError(endpoint, 0, f"{type(exc).__name__}: {exc}"[:200]) from None
        headers = response.headers or {}
        return LineResult(response.status_code, headers.get("x-line-request-id"), response.data)

    async def reply(
        self,
        reply_token: str,
        texts: Sequence[str],
        quick_reply: Sequence[QuickReplyOption] = (),
    ) -> LineResult:
        request = ReplyMessageRequest(
            replyToken=reply_token, messages=text_messages(texts, quick_reply)
        )
        return await self._call(
            "reply",
            lambda: self._api.reply_message_with_http_info(request, _request_timeout=self.timeout),
        )

    async def push(
        self,
        to: str,
        texts: Sequence[str],
        quick_reply: Sequence[QuickReplyOption] = (),
        *,
        key: str,
    ) -> LineResult:
        request = PushMessageRequest(to=to, messages=text_messages(texts, quick_reply))
        return await self._call(
            "push",
            lambda: self._api.push_message_with_http_info(
                request, x_line_retry_key=key, _request_timeout=self.timeout
            ),
        )

    async def multicast(self, to: Sequence[str], texts: Sequence[str], *, key: str) -> LineResult:
        request = MulticastRequest(to=list(to), messages=text_messages(texts))
        return await self._call(
            "multicast",
            lambda: self._api.multicast_with_http_info(
                request, x_line_retry_key=key, _request_timeout=self.timeout
            ),
        )

    async def broadcast(self, texts: Sequence[str], *, key: str) -> LineResult:
        request = BroadcastRequest(messages=text_messages(texts))
        return await self._call(
            "broadcast",
            lambda: self._api.broadcast_with_http_info(
                request, x_line_retry_key=key, _request_timeout=self.timeout
            ),
        )

    async def mark_as_read(self, read_token: str) -> LineResult:
        """既読 on the student's message of ``read_token`` and every earlier one (free)."""
        request = MarkMessagesAsReadByTokenRequest(markAsReadToken=read_token)
        return await self._call(
            "mark_as_read",
            lambda: self._api.mark_messages_as_read_by_token_with_http_info(
                request, _request_timeout=self.timeout
            ),
        )

    async def start_loading(self, user_id: str, seconds: int) -> LineResult:
        """The loading animation in ``user_id``'s chat for ``seconds`` (5..60, steps of 5), or
        until a message of ours reaches it (free)."""
        request = ShowLoadingAnimationRequest(chatId=user_id, loadingSeconds=seconds)
        return await self._call(
            "loading",
            lambda: self._api.show_loading_animation_with_http_info(
                request, _request_timeout=self.timeout
            ),
        )

    async def quota(self) -> tuple[str, int | None]:
        """(``none`` | ``limited``, the month's target limit or None)."""
        result = await self._call(
            "quota",
            lambda: self._api.get_message_quota_with_http_info(_request_timeout=self.timeout),
        )
        kind = getattr(result.body.type, "value", result.body.type)
        return str(kind), result.body.value

    async def consumption(self) -> int:
        result = await self._call(
            "quota_consumption",
            lambda: self._api.get_message_quota_consumption_with_http_info(
                _request_timeout=self.timeout
            ),
        )
        return int(result.body.total_usage)

    async def create_rich_menu(self, menu: dict[str, Any]) -> str:
        request = RichMenuRequest.from_dict(menu)
        result = await self._call(
            "richmenu",
            lambda: self._api.create_rich_menu_with_http_info(
                request, _request_timeout=self.timeout
            ),
        )
        return str(result.body.rich_menu_id)

    async def upload_rich_menu_image(self, rich_menu_id: str, image: bytes, mime: str) -> None:
        await self._call(
            "richmenu_content",
            lambda: self._blob.set_rich_menu_image_with_http_info(
                rich_menu_id,
                bytes(image),
                _headers={"Content-Type": mime},
                _request_timeout=max(self.timeout, 30.0),
            ),
        )

    async def set_default_rich_menu(self, rich_menu_id: str) -> None:
        await self._call(
            "richmenu_default",
            lambda: self._api.set_default_rich_menu_with_http_info(
                rich_menu_id, _request_timeout=self.timeout
            ),
        )

    async def default_rich_menu(self) -> str | None:
        try:
            result = await self._call(
                "richmenu_default",
                lambda: self._api.get_default_rich_menu_id_with_http_info(
                    _request_timeout=self.timeout
                ),
            )
        except LineError as exc:
            if exc.status == 404:
                return None
            raise
        return str(result.body.rich_menu_id)

    async def rich_menu_name(self, rich_menu_id: str) -> str | None:
        """The name of a rich menu; None when it does not exist."""
        try:
            result = await self._call(
                "richmenu",
                lambda: self._api.get_rich_menu_with_http_info(
                    rich_menu_id, _request_timeout=self.timeout
                ),
            )
        except LineError as exc:
            if exc.status == 404:
                return None
            raise
        return str(result.body.name)

    async def delete_rich_menu(self, rich_menu_id: str) -> None:
        await self._call(
            "richmenu",
            lambda: self._api.delete_rich_menu_with_http_info(
                rich_menu_id, _request_timeout=self.timeout
            ),
        )


def _error_from(endpoint: str, exc: ApiException) -> LineError:
    headers = exc.headers or {}
    body: Any = exc.body
    message = ""
    if body:
        try:
            parsed = json.loads(body)
            message = str(parsed.get("message", "")) if isinstance(parsed, dict) else str(parsed)
            details = parsed.get("details") if isinstance(parsed, dict) else None
            if details:
                message += " " + "; ".join(
                    f"{d.get('property', '')}: {d.get('message', '')}" for d in details[:3]
                )
        except (ValueError, TypeError):
            message = str(body)[:200]
    retry_after: float | None = None
    raw_retry_after = headers.get("Retry-After")
    if raw_retry_after:
        try:
            retry_after = float(raw_retry_after)
        except ValueError:
            retry_after = None
    return LineError(
        endpoint,
        int(exc.status or 0),
        message or str(exc.reason or ""),
        request_id=headers.get("x-line-request-id"),
        accepted_request_id=headers.get("x-line-accepted-request-id"),
        retry_after=retry_after,
    )
