"""The fake's HTTP side: the Messaging API endpoints the project uses, and a control API.

Every LINE endpoint goes through the same steps, in the order LINE applies them as far as its
documentation tells: injected latency; bearer token (401); rate limit (429); an injected failure;
body size (413); ``X-Line-Retry-Key`` (400 where not allowed or not a UUID, 409 with
``x-line-accepted-request-id`` when already accepted); JSON and shape (400 with LINE's error
body); the endpoint's own rule (reply token, read token, monthly quota). Every answer carries
``x-line-request-id``. Read marks and the loading animation count nothing against the month's
quota, as on LINE.

The control API under ``/fake/v1/`` lets a test or a script in another process do what the
in-process handle does: read what a user received and what their chat shows (which of their
messages show 既読, the loading animations, ``/fake/v1/users/{userId}/chat``), switch faults, set
the quota, send signed webhooks. It needs no token.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import secrets
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from soudan_fakeline import validation
from soudan_fakeline.platform import (
    BROADCAST,
    LOADING,
    MARK_AS_READ,
    MULTICAST,
    NARROWCAST,
    PUSH,
    QUOTA,
    QUOTA_CONSUMPTION,
    REPLY,
    RETRY_KEY_ENDPOINTS,
    RICHMENU,
    TOKEN,
    FakeLine,
    RequestRecord,
    RichMenu,
    new_request_id,
)
from soudan_fakeline.webhook import WebhookSender

MAX_BODY = 2 * 1024 * 1024
MAX_RICH_MENU_IMAGE = 1024 * 1024
REQUEST_ID = "x-line-request-id"
ACCEPTED_REQUEST_ID = "x-line-accepted-request-id"
RETRY_KEY = "X-Line-Retry-Key"

FAKE: web.AppKey[FakeLine] = web.AppKey("fakeline", FakeLine)
SENDER: web.AppKey[WebhookSender] = web.AppKey("fakeline_sender", WebhookSender)


class _Answer(Exception):
    """Stop processing and answer with this status and body."""

    def __init__(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


def _error(status: int, message: str, details: list[dict[str, str]] | None = None) -> _Answer:
    body: dict[str, Any] = {"message": message}
    if details:
        body["details"] = details
    return _Answer(status, body)


def _invalid(details: list[dict[str, str]]) -> _Answer:
    return _error(400, f"The request body has {len(details)} error(s)", details)


class Context:
    """One API request under way."""

    def __init__(self, fake: FakeLine, request: web.Request, endpoint: str) -> None:
        self.fake = fake
        self.request = request
        self.endpoint = endpoint
        self.request_id = new_request_id()
        self.retry_key: str | None = None
        self.recipients = 0
        self.raw: bytes = b""

    async def json_body(self) -> dict[str, Any]:
        try:
            body = json.loads(self.raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _error(400, "The request body could not be parsed as JSON") from exc
        if not isinstance(body, dict):
            raise _error(400, "The request body must be a JSON object")
        return body


Handler = Callable[[Context], Awaitable[tuple[int, dict[str, Any] | bytes, str]]]


def _line_endpoint(endpoint: str, handler: Handler, *, read_body: bool = True) -> Any:
    async def serve(request: web.Request) -> web.StreamResponse:
        fake = request.app[FAKE]
        ctx = Context(fake, request, endpoint)
        fault, latency = fake.next_fault(endpoint)
        status = 500
        try:
            if latency > 0:
                await asyncio.sleep(latency)
            _authorise(fake, request)
            if not fake.take_rate(endpoint):
                raise _error(429, "Too many requests")
            if fault is not None and fault.status and not fault.after_processing:
                raise _error(fault.status, fault.message or _fault_message(fault.status))
            if read_body:
                if (request.content_length or 0) > MAX_BODY:
                    raise _error(413, "Request Entity Too Large")
                ctx.raw = await request.read()
                if len(ctx.raw) > MAX_BODY:
                    raise _error(413, "Request Entity Too Large")
            _check_retry_key(ctx)
            status, body, content_type = await handler(ctx)
            if ctx.retry_key is not None and 200 <= status < 300:
                fake.remember_retry_key(ctx.retry_key, ctx.request_id)
            if fault is not None and fault.hold > 0:
                await fake.hold_answer(fault.hold)  # done, the sender not told yet
            if fault is not None and fault.status:
                raise _error(fault.status, fault.message or _fault_message(fault.status))
        except _Answer as answer:
            status = answer.status
            headers = {REQUEST_ID: ctx.request_id, **answer.headers}
            return web.json_response(answer.body, status=status, headers=headers)
        finally:
            fake.record(
                RequestRecord(
                    endpoint=endpoint,
                    method=request.method,
                    path=request.path,
                    status=status,
                    request_id=ctx.request_id,
                    at=fake.now(),
                    retry_key=ctx.retry_key,
                    recipients=ctx.recipients,
                )
            )
        headers = {REQUEST_ID: ctx.request_id}
        if isinstance(body, bytes):
            return web.Response(
                body=body, status=status, content_type=content_type, headers=headers
            )
        return web.json_response(body, status=status, headers=headers)

    return serve


def _fault_message(status: int) -> str:
    if status == 429:
        return "Too many requests"
    if status >= 500:
        return "Internal server error (injected by the fake)"
    return f"Injected error {status}"


def _authorise(fake: FakeLine, request: web.Request) -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token or not fake.token_valid(token.strip()):
        raise _error(
            401,
            "Authentication failed. Confirm that the access token in the authorization header "
            "is valid.",
        )


def _check_retry_key(ctx: Context) -> None:
    key = ctx.request.headers.get(RETRY_KEY)
    if key is None:
        return
    if ctx.endpoint not in RETRY_KEY_ENDPOINTS:
        raise _error(400, f"The {RETRY_KEY} header is not supported by this endpoint")
    if not validation.UUID.match(key):
        raise _error(400, f"The {RETRY_KEY} header must be a UUID (8-4-4-4-12 hexadecimal)")
    ctx.retry_key = key.lower()
    accepted = ctx.fake.accepted_request(ctx.retry_key)
    if accepted is not None:
        raise _Answer(
            409,
            {"message": "The retry key is already accepted"},
            {ACCEPTED_REQUEST_ID: accepted},
        )


def _sent_messages(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "sentMessages": [
            {"id": str(secrets.randbelow(10**18)), "quoteToken": secrets.token_urlsafe(24)}
            for _ in messages
        ]
    }


def _charge(ctx: Context, recipients: int) -> None:
    if not ctx.fake.quota_allows(recipients):
        raise _error(429, "You have reached your monthly limit.")


# -- messages -------------------------------------------------------------------------------------


async def _reply(ctx: Context) -> tuple[int, dict[str, Any], str]:
    body = await ctx.json_body()
    details = validation.check_reply(body)
    if details:
        raise _invalid(details)
    user_id = ctx.fake.use_reply_token(body["replyToken"])
    if user_id is None:
        raise _error(400, "Invalid reply token")
    ctx.recipients = ctx.fake.deliver(
        [user_id], body["messages"], method=REPLY, request_id=ctx.request_id, retry_key=None
    )
    return 200, _sent_messages(body["messages"]), "application/json"


async def _push(ctx: Context) -> tuple[int, dict[str, Any], str]:
    body = await ctx.json_body()
    details = validation.check_push(body, ctx.fake.strict_ids)
    if details:
        raise _invalid(details)
    _charge(ctx, 1)
    ctx.recipients = ctx.fake.deliver(
        [body["to"]],
        body["messages"],
        method=PUSH,
        request_id=ctx.request_id,
        retry_key=ctx.retry_key,
    )
    ctx.fake.consumption += ctx.recipients
    return 200, _sent_messages(body["messages"]), "application/json"


async def _multicast(ctx: Context) -> tuple[int, dict[str, Any], str]:
    body = await ctx.json_body()
    details = validation.check_multicast(body, ctx.fake.strict_ids)
    if details:
        raise _invalid(details)
    users = list(dict.fromkeys(body["to"]))
    _charge(ctx, len(users))
    ctx.recipients = ctx.fake.deliver(
        users,
        body["messages"],
        method=MULTICAST,
        request_id=ctx.request_id,
        retry_key=ctx.retry_key,
    )
    ctx.fake.consumption += ctx.recipients
    return 200, {}, "application/json"


async def _broadcast(ctx: Context) -> tuple[int, dict[str, Any], str]:
    body = await ctx.json_body()
    details = validation.check_broadcast(body)
    if details:
        raise _invalid(details)
    users = sorted(ctx.fake.followers)
    _charge(ctx, len(users))
    ctx.recipients = ctx.fake.deliver(
        users,
        body["messages"],
        method=BROADCAST,
        request_id=ctx.request_id,
        retry_key=ctx.retry_key,
    )
    ctx.fake.consumption += ctx.recipients
    return 200, {}, "application/json"


async def _quota(ctx: Context) -> tuple[int, dict[str, Any], str]:
    limit = ctx.fake.quota_limit
    body: dict[str, Any] = (
        {"type": "none"} if limit is None else {"type": "limited", "value": limit}
    )
    return 200, body, "application/json"


async def _consumption(ctx: Context) -> tuple[int, dict[str, Any], str]:
    return 200, {"totalUsage": ctx.fake.consumption}, "application/json"


# -- the chat: read marks (既読) and the loading animation -------------------------------------


async def _mark_as_read(ctx: Context) -> tuple[int, dict[str, Any], str]:
    """``POST /v2/bot/chat/markAsRead``: the token's message and the user's earlier ones show
    既読. An unknown token is 400 (LINE: "Tokens must be used by the bot that received them via
    Webhook"); a known one may be used again, and never expires. Free of the month's quota."""
    body = await ctx.json_body()
    details = validation.check_mark_as_read(body)
    if details:
        raise _invalid(details)
    if ctx.fake.mark_read(body["markAsReadToken"]) is None:
        raise _error(400, "An invalid markAsReadToken is specified")
    return 200, {}, "application/json"


async def _loading_start(ctx: Context) -> tuple[int, dict[str, Any], str]:
    """``POST /v2/bot/chat/loading/start``: 202 and the animation in the user's chat for
    ``loadingSeconds`` (default 20), until then or until a message reaches the user; a new
    start replaces the time left. Free of the month's quota."""
    body = await ctx.json_body()
    details = validation.check_loading(body, ctx.fake.strict_ids)
    if details:
        raise _invalid(details)
    ctx.fake.start_loading(body["chatId"], int(body.get("loadingSeconds", 20)), ctx.request_id)
    return 202, {}, "application/json"


# -- rich menus -----------------------------------------------------------------------------------


async def _create_rich_menu(ctx: Context) -> tuple[int, dict[str, Any], str]:
    body = await ctx.json_body()
    details = validation.check_rich_menu(body)
    if details:
        raise _invalid(details)
    rich_menu_id = "richmenu-" + secrets.token_hex(16)
    ctx.fake.rich_menus[rich_menu_id] = RichMenu(rich_menu_id, body)
    return 200, {"richMenuId": rich_menu_id}, "application/json"


def _menu(ctx: Context) -> RichMenu:
    menu = ctx.fake.rich_menus.get(ctx.request.match_info["richMenuId"])
    if menu is None:
        raise _error(404, "Not found")
    return menu


def image_size(data: bytes, content_type: str) -> tuple[int, int] | None:
    """Width and height of a PNG or JPEG, read from its header; None if it is neither."""
    if content_type == "image/png" and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if content_type == "image/jpeg" and data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            length = struct.unpack(">H", data[i + 2 : i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                height, width = struct.unpack(">HH", data[i + 5 : i + 9])
                return int(width), int(height)
            i += 2 + length
    return None


async def _upload_rich_menu_image(ctx: Context) -> tuple[int, dict[str, Any], str]:
    menu = _menu(ctx)
    content_type = ctx.request.content_type
    if content_type not in ("image/png", "image/jpeg"):
        raise _error(415, "Unsupported Media Type: the image must be image/jpeg or image/png")
    if len(ctx.raw) > MAX_RICH_MENU_IMAGE:
        raise _error(413, "The image must be at most 1 MB")
    if menu.image is not None:
        raise _error(400, "An image has already been uploaded to the richmenu")
    size = image_size(ctx.raw, content_type)
    expected = (menu.body["size"]["width"], menu.body["size"]["height"])
    if size != expected:
        raise _error(400, f"Image size {size} does not match the rich menu size {expected}")
    menu.image = ctx.raw
    menu.image_type = content_type
    return 200, {}, "application/json"


async def _download_rich_menu_image(ctx: Context) -> tuple[int, dict[str, Any] | bytes, str]:
    menu = _menu(ctx)
    if menu.image is None:
        raise _error(404, "Not found")
    return 200, menu.image, menu.image_type or "application/octet-stream"


async def _get_rich_menu(ctx: Context) -> tuple[int, dict[str, Any], str]:
    menu = _menu(ctx)
    return 200, {"richMenuId": menu.rich_menu_id, **menu.body}, "application/json"


async def _delete_rich_menu(ctx: Context) -> tuple[int, dict[str, Any], str]:
    menu = _menu(ctx)
    del ctx.fake.rich_menus[menu.rich_menu_id]
    if ctx.fake.default_rich_menu == menu.rich_menu_id:
        ctx.fake.default_rich_menu = None
    return 200, {}, "application/json"


async def _list_rich_menus(ctx: Context) -> tuple[int, dict[str, Any], str]:
    menus = [{"richMenuId": m.rich_menu_id, **m.body} for m in ctx.fake.rich_menus.values()]
    return 200, {"richmenus": menus}, "application/json"


async def _set_default_rich_menu(ctx: Context) -> tuple[int, dict[str, Any], str]:
    menu = _menu(ctx)
    if menu.image is None:
        raise _error(400, "must upload richmenu image before applying it to user")
    ctx.fake.default_rich_menu = menu.rich_menu_id
    return 200, {}, "application/json"


async def _get_default_rich_menu(ctx: Context) -> tuple[int, dict[str, Any], str]:
    if ctx.fake.default_rich_menu is None:
        raise _error(404, "no default richmenu")
    return 200, {"richMenuId": ctx.fake.default_rich_menu}, "application/json"


async def _cancel_default_rich_menu(ctx: Context) -> tuple[int, dict[str, Any], str]:
    ctx.fake.default_rich_menu = None
    return 200, {}, "application/json"


# -- channel access tokens v2.1 ----------------------------------------------------------------

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_TOKEN_EXP = 30 * 24 * 3600


def _oauth_error(description: str) -> web.Response:
    return web.json_response(
        {"error": "invalid_request", "error_description": description},
        status=400,
        headers={REQUEST_ID: new_request_id()},
    )


def _jwt_claims(assertion: str) -> dict[str, Any] | None:
    parts = assertion.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


async def _issue_token(request: web.Request) -> web.Response:
    """``POST /oauth2/v2.1/token``: checks the JWT's claims as LINE does (not its signature,
    unless the handle has an ``assertion_verifier``)."""
    fake = request.app[FAKE]
    form = await request.post()
    if form.get("grant_type") != "client_credentials":
        return _oauth_error("unsupported grant_type")
    if form.get("client_assertion_type") != JWT_BEARER:
        return _oauth_error("invalid client_assertion_type")
    assertion = str(form.get("client_assertion", ""))
    claims = _jwt_claims(assertion)
    if claims is None:
        return _oauth_error("invalid client_assertion")
    verifier = fake.assertion_verifier
    if verifier is not None and not verifier(assertion):
        return _oauth_error("invalid signature")
    now = fake.now()
    token_exp = claims.get("token_exp", MAX_TOKEN_EXP)
    if (
        claims.get("iss") != fake.channel_id
        or claims.get("sub") != fake.channel_id
        or claims.get("aud") != "https://api.line.me/"
        or not isinstance(claims.get("exp"), int | float)
        or claims["exp"] < now
        or claims["exp"] > now + 30 * 60 + 5
        or not isinstance(token_exp, int)
        or not 0 < token_exp <= MAX_TOKEN_EXP
    ):
        return _oauth_error("invalid client_assertion claims")
    issued = fake.issue_access_token(token_exp)
    fake.record(RequestRecord(TOKEN, "POST", request.path, 200, new_request_id(), now))
    return web.json_response(
        {
            "access_token": issued.access_token,
            "token_type": "Bearer",
            "expires_in": token_exp,
            "key_id": issued.key_id,
        }
    )


async def _verify_token(request: web.Request) -> web.Response:
    fake = request.app[FAKE]
    token = request.query.get("access_token", "")
    issued = fake.issued_tokens.get(token)
    if issued is None or issued.revoked or issued.expires_at <= fake.now():
        return _oauth_error("access token expired")
    return web.json_response(
        {
            "client_id": fake.channel_id,
            "expires_in": int(issued.expires_at - fake.now()),
            "scope": "profile chat_message.write",
        }
    )


async def _revoke_token(request: web.Request) -> web.Response:
    fake = request.app[FAKE]
    form = await request.post()
    if form.get("client_id") != fake.channel_id or form.get("client_secret") != fake.channel_secret:
        return _oauth_error("invalid client")
    fake.revoke_access_token(str(form.get("access_token", "")))
    fake.record(RequestRecord(TOKEN, "POST", request.path, 200, new_request_id(), fake.now()))
    return web.Response(status=200)


# -- control API ----------------------------------------------------------------------------------


async def _control_messages(request: web.Request) -> web.Response:
    fake = request.app[FAKE]
    user_id = request.match_info["userId"]
    return web.json_response(
        {"userId": user_id, "messages": [d.to_json() for d in fake.received(user_id)]}
    )


async def _control_chat(request: web.Request) -> web.Response:
    """What the user's chat shows of the bot's side: which of the user's messages show 既読,
    the loading animations started, and whether one shows now."""
    fake = request.app[FAKE]
    user_id = request.match_info["userId"]
    return web.json_response(
        {
            "userId": user_id,
            "sent": [i.to_json() for i in fake.sent_by(user_id)],
            "loading": [x.to_json() for x in fake.loadings_of(user_id)],
            "loadingShown": fake.loading_shown(user_id),
        }
    )


async def _control_requests(request: web.Request) -> web.Response:
    fake = request.app[FAKE]
    endpoint = request.query.get("endpoint")
    rows = [r.to_json() for r in fake.requests if endpoint is None or r.endpoint == endpoint]
    return web.json_response({"requests": rows})


async def _control_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[FAKE].stats())


async def _control_faults(request: web.Request) -> web.Response:
    fake = request.app[FAKE]
    if request.method == "DELETE":
        fake.clear_faults()
        return web.json_response({"faults": 0})
    body = await request.json()
    fake.inject(
        body.get("endpoint", "*"),
        status=int(body.get("status", 500)),
        times=int(body.get("times", 1)),
        after_processing=bool(body.get("afterProcessing", False)),
        latency=float(body.get("latency", 0.0)),
        hold=float(body.get("hold", 0.0)),
    )
    return web.json_response({"faults": len(fake.faults)})


async def _control_quota(request: web.Request) -> web.Response:
    fake = request.app[FAKE]
    body = await request.json()
    if "limit" in body:
        fake.quota_limit = None if body["limit"] is None else int(body["limit"])
    if "consumption" in body:
        fake.consumption = int(body["consumption"])
    return web.json_response({"limit": fake.quota_limit, "consumption": fake.consumption})


async def _control_reset(request: web.Request) -> web.Response:
    request.app[FAKE].reset()
    return web.json_response({"reset": True})


async def _control_clock(request: web.Request) -> web.Response:
    body = await request.json()
    request.app[FAKE].advance(float(body.get("advance", 0)))
    return web.json_response({"now": request.app[FAKE].now()})


async def _control_tokens(request: web.Request) -> web.Response:
    fake = request.app[FAKE]
    body = await request.json()
    for token in body.get("add", []):
        fake.access_tokens.add(str(token))
    for token in body.get("revoke", []):
        fake.revoke_access_token(str(token))
    return web.json_response({"tokens": len(fake.access_tokens)})


async def _control_webhook(request: web.Request) -> web.Response:
    """Send signed events to ``url``; body ``{"url", "events": [{"type": "message",
    "userId", "text"}, {"type": "follow", "userId"}, {"type": "postback", "userId", "data"}]}``.
    """
    sender = request.app[SENDER]
    body = await request.json()
    events = [sender.event_from_spec(spec) for spec in body.get("events", [])]
    result = await sender.send(events, url=body.get("url"))
    return web.json_response(
        {
            "status": result.status,
            "replyTokens": [e.get("replyToken") for e in events],
            "webhookEventIds": [e["webhookEventId"] for e in events],
            "messageIds": [(e.get("message") or {}).get("id") for e in events],
        }
    )


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/v2/bot/message/reply", _line_endpoint(REPLY, _reply))
    r.add_post("/v2/bot/message/push", _line_endpoint(PUSH, _push))
    r.add_post("/v2/bot/message/multicast", _line_endpoint(MULTICAST, _multicast))
    r.add_post("/v2/bot/message/broadcast", _line_endpoint(BROADCAST, _broadcast))
    r.add_post("/v2/bot/message/narrowcast", _line_endpoint(NARROWCAST, _broadcast))
    r.add_post("/v2/bot/chat/markAsRead", _line_endpoint(MARK_AS_READ, _mark_as_read))
    r.add_post("/v2/bot/chat/loading/start", _line_endpoint(LOADING, _loading_start))
    r.add_get("/v2/bot/message/quota", _line_endpoint(QUOTA, _quota, read_body=False))
    r.add_get(
        "/v2/bot/message/quota/consumption",
        _line_endpoint(QUOTA_CONSUMPTION, _consumption, read_body=False),
    )
    r.add_post("/v2/bot/richmenu", _line_endpoint(RICHMENU, _create_rich_menu))
    r.add_get("/v2/bot/richmenu/list", _line_endpoint(RICHMENU, _list_rich_menus, read_body=False))
    r.add_post(
        "/v2/bot/richmenu/{richMenuId}/content",
        _line_endpoint(RICHMENU, _upload_rich_menu_image),
    )
    r.add_get(
        "/v2/bot/richmenu/{richMenuId}/content",
        _line_endpoint(RICHMENU, _download_rich_menu_image, read_body=False),
    )
    r.add_get(
        "/v2/bot/richmenu/{richMenuId}", _line_endpoint(RICHMENU, _get_rich_menu, read_body=False)
    )
    r.add_delete(
        "/v2/bot/richmenu/{richMenuId}",
        _line_endpoint(RICHMENU, _delete_rich_menu, read_body=False),
    )
    r.add_post(
        "/v2/bot/user/all/richmenu/{richMenuId}",
        _line_endpoint(RICHMENU, _set_default_rich_menu, read_body=False),
    )
    r.add_get(
        "/v2/bot/user/all/richmenu",
        _line_endpoint(RICHMENU, _get_default_rich_menu, read_body=False),
    )
    r.add_delete(
        "/v2/bot/user/all/richmenu",
        _line_endpoint(RICHMENU, _cancel_default_rich_menu, read_body=False),
    )
    r.add_post("/oauth2/v2.1/token", _issue_token)
    r.add_get("/oauth2/v2.1/verify", _verify_token)
    r.add_post("/oauth2/v2.1/revoke", _revoke_token)

    r.add_get("/fake/v1/users/{userId}/messages", _control_messages)
    r.add_get("/fake/v1/users/{userId}/chat", _control_chat)
    r.add_get("/fake/v1/requests", _control_requests)
    r.add_get("/fake/v1/stats", _control_stats)
    r.add_post("/fake/v1/faults", _control_faults)
    r.add_delete("/fake/v1/faults", _control_faults)
    r.add_post("/fake/v1/quota", _control_quota)
    r.add_post("/fake/v1/reset", _control_reset)
    r.add_post("/fake/v1/clock", _control_clock)
    r.add_post("/fake/v1/tokens", _control_tokens)
    r.add_post("/fake/v1/webhook", _control_webhook)
