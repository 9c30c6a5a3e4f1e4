"""HTTP plumbing of the console: security headers, sessions, CSRF, access rules, rendering.

Every route declares who may use it with :func:`access`; a route without a declaration needs a
signed-in staff member (closed by default). Every POST must carry the session's CSRF token
(form field ``csrf_token`` or header ``X-CSRF-Token``).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any
from urllib.parse import urlencode, urlsplit
from zoneinfo import ZoneInfo

import aiohttp_jinja2
from aiohttp import web
from markupsafe import Markup, escape
from soudan_triage.urgency import Detector

from soudan_console.core import Console
from soudan_console.domain import ROLES, Staff
from soudan_console.security import COOKIE, Session
from soudan_console.staff import get_staff, needs_password_change, totp_required_roles

CONSOLE: web.AppKey[Console] = web.AppKey("console", Console)
SESSION: web.RequestKey[Session | None] = web.RequestKey("session", object)  # type: ignore[arg-type]
STAFF_KEY: web.RequestKey[Staff | None] = web.RequestKey("staff", object)  # type: ignore[arg-type]
PENDING_STAFF: web.RequestKey[Staff] = web.RequestKey("pending_staff", Staff)
TOKYO = ZoneInfo("Asia/Tokyo")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OPEN_PATHS = ("/static/", "/healthz", "/readyz", "/metrics")
BACKGROUND_HEADER = "X-Soudan-Background"

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Access:
    roles: frozenset[str] | None  # None: any role
    stage: str = "full"  # "public", "second_factor" or "full"
    forced_ok: bool = False  # reachable while a password change or 2FA set-up is due


def access(
    *roles: str, stage: str = "full", forced_ok: bool = False
) -> Callable[[Handler], Handler]:
    rule = Access(frozenset(roles) if roles else None, stage, forced_ok)

    def mark(handler: Handler) -> Handler:
        handler._access = rule  # type: ignore[attr-defined]
        return handler

    return mark


DEFAULT_ACCESS = Access(None)


def get_console(request: web.Request) -> Console:
    return request.app[CONSOLE]


def current_staff(request: web.Request) -> Staff:
    staff: Staff | None = request.get(STAFF_KEY)
    if staff is None:
        raise web.HTTPUnauthorized()
    return staff


def current_session(request: web.Request) -> Session | None:
    return request.get(SESSION)


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    console = request.app[CONSOLE]
    h = response.headers
    h.setdefault("Content-Security-Policy", CSP)
    h.setdefault("X-Frame-Options", "DENY")
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("Referrer-Policy", "same-origin")
    h.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    h.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
    if not request.path.startswith("/static/"):
        h.setdefault("Cache-Control", "no-store")
    if not console.settings.console_development:
        h.setdefault("Strict-Transport-Security", "max-age=31536000")


def set_session_cookie(request: web.Request, response: web.StreamResponse, token: str) -> None:
    secure = not request.app[CONSOLE].settings.console_development
    response.set_cookie(COOKIE, token, httponly=True, secure=secure, samesite="Strict", path="/")


def clear_session_cookie(request: web.Request, response: web.StreamResponse) -> None:
    secure = not request.app[CONSOLE].settings.console_development
    response.del_cookie(COOKIE, path="/", secure=secure, httponly=True, samesite="Strict")


def wants_html(request: web.Request) -> bool:
    return request.method in SAFE_METHODS and not request.headers.get(BACKGROUND_HEADER)


@web.middleware
async def session_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if path.startswith(OPEN_PATHS):
        return await handler(request)
    console = request.app[CONSOLE]
    rule: Access = getattr(request.match_info.handler, "_access", DEFAULT_ACCESS)
    session = await console.sessions.load(request.cookies.get(COOKIE))
    staff: Staff | None = None
    if session is not None and session.staff_id:
        staff = await get_staff(console, session.staff_id)
        if staff is None or staff.disabled:
            await console.sessions.delete(session)
            session = None
            staff = None
    request[SESSION] = session
    if session is not None and session.stage == "full":
        request[STAFF_KEY] = staff

    if request.method not in SAFE_METHODS:
        await _check_csrf(request, session)

    if rule.stage == "public":
        return await handler(request)
    if rule.stage == "second_factor":
        if session is None or session.stage != "second_factor" or staff is None:
            raise _to_login(request)
        request[PENDING_STAFF] = staff
        return await handler(request)
    if session is None or session.stage != "full" or staff is None:
        raise _to_login(request)
    if not rule.forced_ok:
        if needs_password_change(console, staff):
            raise _redirect_or_status(request, "/password")
        if not staff.totp_enabled and staff.role in await totp_required_roles(console):
            raise _redirect_or_status(request, "/account/second-factor")
    if rule.roles is not None and staff.role not in rule.roles:
        raise forbidden(request)
    if not request.headers.get(BACKGROUND_HEADER) and path != "/events":
        await console.sessions.touch(session)
    return await handler(request)


async def _check_csrf(request: web.Request, session: Session | None) -> None:
    sent = request.headers.get("X-CSRF-Token")
    if sent is None and request.content_type in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        form = await request.post()
        value = form.get("csrf_token")
        sent = value if isinstance(value, str) else None
    if session is None or not sent or not hmac.compare_digest(sent, session.csrf):
        raise error_page(
            request,
            403,
            "この操作は受け付けられませんでした",
            "ページが古くなっているか、ログインの期限が切れています。"
            "ページを読み込み直してから、もう一度ためしてください。",
        )


def _to_login(request: web.Request) -> web.HTTPException:
    if wants_html(request):
        query = urlencode({"next": request.path_qs}) if request.path not in ("/", "") else ""
        return web.HTTPSeeOther("/login" + (f"?{query}" if query else ""))
    return web.HTTPUnauthorized(text="ログインしてください。")


def _redirect_or_status(request: web.Request, target: str) -> web.HTTPException:
    if wants_html(request):
        return web.HTTPSeeOther(target)
    return web.HTTPForbidden(text="先にパスワードの変更などの手続きをしてください。")


def forbidden(request: web.Request) -> web.HTTPException:
    return error_page(
        request,
        403,
        "このページは使えません",
        "このページは、あなたの役割では使えないことになっています。"
        "必要なときは管理者に相談してください。",
    )


def not_found(request: web.Request) -> web.HTTPException:
    return error_page(request, 404, "見つかりません", "ページが見つかりませんでした。")


def error_page(request: web.Request, status: int, title: str, text: str) -> web.HTTPException:
    body = aiohttp_jinja2.render_string(
        "error.html", request, context(request, {"title": title, "text": text})
    )
    classes: dict[int, type[web.HTTPException]] = {
        400: web.HTTPBadRequest,
        403: web.HTTPForbidden,
        409: web.HTTPConflict,
    }
    cls = classes.get(status, web.HTTPNotFound)
    return cls(text=body, content_type="text/html")


def see_other(path: str, **params: str) -> web.HTTPSeeOther:
    query = urlencode(params)
    return web.HTTPSeeOther(path + (f"?{query}" if query else ""))


def safe_next(target: str | None) -> str:
    """The path to follow after sign-in: only a path on this site, else ``/``.

    Browsers drop tabs and line breaks from a URL and read ``\\`` as ``/``, so ``/\t/evil/``
    would become ``//evil/``, another host. A target is refused outright when it holds any
    control, space or backslash, and is kept only when, parsed, it names no scheme and no host
    and its path starts with exactly one ``/``.
    """
    if not target or len(target) > 2000 or any(_unsafe_in_url(ch) for ch in target):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/"):
        return "/"
    if target.startswith("//") or parts.path.startswith("//"):
        return "/"
    return target


def _unsafe_in_url(ch: str) -> bool:
    return ch == "\\" or ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")


# -- rendering ----------------------------------------------------------------------------------

NOTICES = {
    "claimed": "この相談の担当になりました。",
    "taken": "ほかの相談員が先にこの相談を受けました。ほかの相談をお願いします。",
    "empty": "いま待っている相談はありません。",
    "sending": "返信を送信中です。届いたかどうかは、やりとりの吹き出しの下に出ます。",
    "retried": "返信をもう一度送っています（送信中）。",
    "retry_nothing": "この返信は、もう送信中か送信済みです。",
    "noted": "メモを残しました。",
    "released": "相談を待ち行列に戻しました。",
    "transferred": "相談を引き継ぎました。",
    "closed": "相談を終了しました。おつかれさまでした。",
    "gone": "この相談はもう状態が変わっています。",
    "password_changed": "パスワードを変更しました。",
    "second_factor_on": "2段階認証を設定しました。",
    "saved": "保存しました。すぐに反映されます。",
    "reset": "初期設定（サーバーの設定ファイルの内容）に戻しました。",
    "staff_created": "アカウントを作りました。初めてのログインでパスワードを変えてもらいます。",
    "staff_role": "役割を変えました。その人はもう一度ログインします。",
    "staff_disable": "アカウントを使えなくしました。その人のログインは終わりました。",
    "staff_enable": "アカウントをまた使えるようにしました。",
    "staff_unlock": "ログインの制限を解きました。",
    "staff_reset-second-factor": "2段階認証を解除しました。次のログインで設定し直してもらいます。",
    "staff_reset-password": "仮のパスワードにしました。次のログインで変えてもらいます。",
    "security_saved": "2段階認証が必要な役割を保存しました。",
    "broadcast_requested": "一斉送信を受け付けました。",
    "broadcast_cancelled": "予約を取り消しました。",
    "contact_recorded": "連絡の記録を残しました。",
    "emergency_closed": "緊急対応を終了しました。",
    "logged_out": "ログアウトしました。",
    "status": "状態を変えました。",
}


def jst(value: datetime | None, fmt: str = "%m/%d %H:%M") -> str:
    if value is None:
        return ""
    return value.astimezone(TOKYO).strftime(fmt)


def duration(seconds: float | int | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}秒"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes}分"
    return f"{minutes // 60}時間{minutes % 60}分"


# Characters that change how text around them is shown, or show nothing at all: bidi controls
# (U+202E makes "abc\u202egnp.exe" read "abcexe.png"), zero-width and other format characters,
# control characters, and the blank "letters" some fonts draw as nothing.
# The combining grapheme joiner and the Mongolian variation selectors join nothing visible.
_BLANK_LETTERS = frozenset(
    "\u115f\u1160\u3164\uffa0\u2800\u17b4\u17b5\u034f\u180b\u180c\u180d\u180f"
)
_KEEP = frozenset("\n\t")


def _hidden(ch: str) -> bool:
    if ch in _KEEP:
        return False
    return ch in _BLANK_LETTERS or unicodedata.category(ch) in ("Cf", "Cc", "Co", "Cs", "Zl", "Zp")


@functools.lru_cache(maxsize=16)
def _detector(words: tuple[str, ...]) -> Detector:
    """The urgency detector of triage for these keywords (the official ones always): the
    console marks what triage finds, read the same way (one normalisation, not two)."""
    return Detector(words)


def _spans(text: str, keywords: list[str], phrases: list[str]) -> list[tuple[int, int]]:
    """Where to mark ``text``: what the urgency detector matches there (a keyword written in
    kana, half-width, with spaces, dots or invisible characters between its letters), and
    every place ``text`` holds one of ``keywords`` or ``phrases`` as written (risk phrases are
    the student's own words). Overlapping places are joined."""
    words = tuple(sorted({k for k in keywords if k}))
    found = {*_detector(words).detect(text).matches, *words, *(p for p in phrases if p)}
    spans: list[tuple[int, int]] = []
    for phrase in found:
        at = text.find(phrase)
        while at >= 0:
            spans.append((at, at + len(phrase)))
            at = text.find(phrase, at + 1)
    joined: list[tuple[int, int]] = []
    for begin, finish in sorted(spans):
        if joined and begin < joined[-1][1]:
            joined[-1] = (joined[-1][0], max(finish, joined[-1][1]))
        else:
            joined.append((begin, finish))
    return joined


def _shown(ch: str) -> Markup:
    if _hidden(ch):
        code = f"U+{ord(ch):04X}"
        return Markup('<span class="hidden-char" title="見えない文字 %s">[%s]</span>') % (
            code,
            code,
        )
    return escape(ch)


def highlight(
    text: str | None,
    keywords: list[str],
    limit: int | None = None,
    phrases: list[str] | None = None,
) -> Markup:
    """``text`` escaped and made safe to look at, with every keyword wrapped in ``<mark>``.

    Invisible and direction-changing characters are shown as ``[U+XXXX]`` marks, so what staff
    read is what the student sent. Keywords are found as the urgency detector finds them
    (``消\u200bえたい``, ``消 え た い`` and ``きえたい`` are all 消えたい), ``phrases`` as
    written; the text is cut to ``limit`` characters.
    """
    if text is None:
        return Markup("")
    spans = _spans(text, keywords, phrases or []) if keywords or phrases else []
    cut = limit is not None and len(text) > limit
    if cut and limit is not None:
        text = text[:limit]
        spans = [(b, min(f, limit)) for b, f in spans if b < limit]
    parts: list[Markup] = []
    position = 0
    for begin, finish in spans:
        parts.extend(_shown(ch) for ch in text[position:begin])
        inner = Markup("").join(_shown(ch) for ch in text[begin:finish])
        parts.append(Markup("<mark>%s</mark>") % inner)
        position = finish
    parts.extend(_shown(ch) for ch in text[position:])
    if cut:
        parts.append(Markup("…"))
    return Markup("").join(parts)


def context(request: web.Request, extra: dict[str, Any]) -> dict[str, Any]:
    session = current_session(request)
    staff = request.get(STAFF_KEY)
    notice = NOTICES.get(request.query.get("msg", ""))
    return {
        "staff": staff,
        "csrf": session.csrf if session else "",
        "roles": ROLES,
        "notice": notice,
        "asset": asset_version(),
        "path": request.path,
        **extra,
    }


def render(
    request: web.Request, template: str, extra: dict[str, Any], *, status: int = 200
) -> web.Response:
    return aiohttp_jinja2.render_template(template, request, context(request, extra), status=status)


_asset_version: str | None = None


def asset_version() -> str:
    """A hash of the static files, appended to their URLs so a new release is fetched anew."""
    global _asset_version
    if _asset_version is None:
        digest = hashlib.sha256()
        root = resources.files("soudan_console") / "static"
        for name in sorted(p.name for p in root.iterdir()):
            digest.update((root / name).read_bytes())
        _asset_version = digest.hexdigest()[:10]
    return _asset_version


def client_source(request: web.Request) -> str:
    return request.remote or ""
