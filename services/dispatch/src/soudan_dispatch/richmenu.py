"""The account's rich menu (運営要領 第8): defined by configuration, drawn, uploaded, made default.

``soudan-dispatch richmenu apply`` builds the menu from ``messages.yaml`` → ``rich_menu``: four
entries on a 2500×1686 image (LINE's large size) in a 2×2 grid:

============== ==================================================================
相談する        postback ``menu=consult`` that opens the keyboard (the student types)
相談できる時間  postback ``menu=hours`` (triage answers with the hours)
運用ポリシー    postback ``menu=policy`` (triage answers with the operating policy)
お問い合わせ    opens the section's web page (``inquiry_url``, 第8-3)
============== ==================================================================

The image is drawn with Pillow in a Japanese font found by path (Debian's ``fonts-ipaexfont``
first; ``RICHMENU_FONT`` overrides), within LINE's rules (JPEG or PNG, at most 1 MB, the menu's
exact size). The menu is created, its image uploaded, it is made the default for every user, and
the previous default menu is deleted.

**At start** (:class:`RichMenuKeeper`, on unless ``RICHMENU_AUTO=false``) dispatch does the same
by itself when it is needed, so a new install has its menu without anyone running the command:
the menu's name carries a fingerprint of its definition (``soudan main menu <16 hex>``), and
the menu is applied when the account has no default menu, or its default is an earlier Soudan
menu with another fingerprint (the configuration, or the console's edit of it, changed). A
default menu that Soudan did not make is left alone (logged). Idempotent: a restart with the
same configuration changes nothing. One replica at a time (the lease ``richmenu``). It runs
beside the service and never holds up readiness: when LINE fails it logs, publishes the alert
fact ``line.rich_menu_failed`` and tries again with backoff (5 s doubling to 10 min); then it
checks the configuration in force every few minutes.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog
from PIL import Image, ImageDraw, ImageFont
from soudan_shared.config import SoudanConfig
from soudan_shared.fact_types import RICH_MENU_APPLIED, RICH_MENU_FAILED
from soudan_shared.facts import Facts
from soudan_shared.records import acquire_lease

from soudan_dispatch.line import LineClient

log = structlog.get_logger(__name__)

WIDTH, HEIGHT = 2500, 1686
MAX_IMAGE_BYTES = 1024 * 1024
FONT_CANDIDATES = (
    Path("/usr/share/fonts/opentype/ipaexfont-gothic/ipaexg.ttf"),
    Path("/usr/share/fonts/truetype/fonts-japanese-gothic.ttf"),
    Path("/usr/share/fonts/opentype/ipafont-gothic/ipag.ttf"),
    Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"),
)
BACKGROUND = (255, 255, 255)
TILE_COLOURS = ((0, 150, 136), (33, 150, 243), (255, 152, 0), (96, 125, 139))
TEXT_COLOUR = (255, 255, 255)
MENU_NAME = "soudan main menu"
LEASE = "richmenu"


class RichMenuError(Exception):
    """The rich menu cannot be built (configuration or font); one line saying why."""


@dataclass(frozen=True)
class Entry:
    label: str
    action: dict[str, Any]


def find_font(override: Path | None = None) -> Path:
    """A font with Japanese glyphs, by path; :class:`RichMenuError` naming the fix if none."""
    candidates = (override,) if override is not None else FONT_CANDIDATES
    for path in candidates:
        if path is not None and path.is_file():
            return path
    if override is not None:
        raise RichMenuError(f"RICHMENU_FONT={override} does not exist")
    raise RichMenuError(
        "no Japanese font found (looked for "
        + ", ".join(str(p) for p in FONT_CANDIDATES)
        + "); install Debian's fonts-ipaexfont (apt-get install fonts-ipaexfont) or set "
        "RICHMENU_FONT to a .ttf/.otf/.ttc with Japanese glyphs"
    )


def inquiry_url(config: SoudanConfig) -> str:
    menu = config.messages.rich_menu
    if menu.inquiry_url:
        return menu.inquiry_url
    match = re.search(r"https://[^\s　]+", config.messages.inquiry)
    if match is None:
        raise RichMenuError(
            "messages.yaml: rich_menu.inquiry_url is not set and inquiry has no https:// address"
        )
    return match.group(0)


def entries(config: SoudanConfig) -> list[Entry]:
    labels = config.messages.rich_menu.labels
    return [
        Entry(
            labels.consult,
            {"type": "postback", "data": "menu=consult", "inputOption": "openKeyboard"},
        ),
        Entry(
            labels.hours,
            {"type": "postback", "data": "menu=hours", "displayText": labels.hours},
        ),
        Entry(
            labels.policy,
            {"type": "postback", "data": "menu=policy", "displayText": labels.policy},
        ),
        Entry(labels.inquiry, {"type": "uri", "uri": inquiry_url(config)}),
    ]


def _cells() -> list[tuple[int, int, int, int]]:
    half_w, half_h = WIDTH // 2, HEIGHT // 2
    return [
        (0, 0, half_w, half_h),
        (half_w, 0, WIDTH - half_w, half_h),
        (0, half_h, half_w, HEIGHT - half_h),
        (half_w, half_h, WIDTH - half_w, HEIGHT - half_h),
    ]


def menu_definition(config: SoudanConfig) -> dict[str, Any]:
    """The ``RichMenuRequest`` body."""
    menu = config.messages.rich_menu
    areas = []
    for entry, (x, y, w, h) in zip(entries(config), _cells(), strict=True):
        action = {"label": entry.label[:20], **entry.action}
        areas.append({"bounds": {"x": x, "y": y, "width": w, "height": h}, "action": action})
    body = {
        "size": {"width": WIDTH, "height": HEIGHT},
        "selected": True,
        "chatBarText": menu.chat_bar_text,
        "areas": areas,
    }
    fingerprint = hashlib.sha256(
        json.dumps(body, sort_keys=True, ensure_ascii=False).encode()
    ).hexdigest()[:16]
    return {**body, "name": f"{MENU_NAME} {fingerprint}"}


def render(config: SoudanConfig, font_path: Path) -> tuple[bytes, str]:
    """The menu's image (bytes, MIME type): PNG, or JPEG if the PNG is over 1 MB."""
    image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(image)
    gap = 12
    for i, (entry, (x, y, w, h)) in enumerate(zip(entries(config), _cells(), strict=True)):
        draw.rounded_rectangle(
            (x + gap, y + gap, x + w - gap, y + h - gap), radius=48, fill=TILE_COLOURS[i % 4]
        )
        size = 150
        font = ImageFont.truetype(str(font_path), size)
        while draw.textlength(entry.label, font=font) > w - 160 and size > 40:
            size -= 8
            font = ImageFont.truetype(str(font_path), size)
        draw.text((x + w / 2, y + h / 2), entry.label, font=font, fill=TEXT_COLOUR, anchor="mm")
    out = io.BytesIO()
    image.save(out, "PNG", optimize=True)
    if out.tell() <= MAX_IMAGE_BYTES:
        return out.getvalue(), "image/png"
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85, optimize=True)
    if out.tell() > MAX_IMAGE_BYTES:
        raise RichMenuError(f"the image is {out.tell()} bytes; LINE allows 1 MB")
    return out.getvalue(), "image/jpeg"


async def apply(
    line: LineClient, config: SoudanConfig, font_path: Path, *, keep_old: bool = False
) -> str:
    """Create the menu, upload its image, make it the default; the new rich menu id."""
    definition = menu_definition(config)
    image, mime = render(config, font_path)
    previous = await line.default_rich_menu()
    rich_menu_id = await line.create_rich_menu(definition)
    await line.upload_rich_menu_image(rich_menu_id, image, mime)
    await line.set_default_rich_menu(rich_menu_id)
    log.info("rich_menu_applied", rich_menu_id=rich_menu_id, previous=previous, bytes=len(image))
    if previous and previous != rich_menu_id and not keep_old:
        await line.delete_rich_menu(previous)
    return rich_menu_id


async def ensure(line: LineClient, config: SoudanConfig, font_path: Path) -> str | None:
    """Apply the configured menu unless the account's default is already it (or is not ours).

    The new rich menu id when one was applied, else None.
    """
    wanted = menu_definition(config)["name"]
    default = await line.default_rich_menu()
    if default is not None:
        name = await line.rich_menu_name(default)
        if name == wanted:
            log.info("rich_menu_current", rich_menu_id=default)
            return None
        if name is not None and not name.startswith(MENU_NAME):
            log.warning("rich_menu_foreign_default_kept", rich_menu_id=default)
            return None
    return await apply(line, config, font_path)


class RichMenuKeeper:
    """Keeps the configured rich menu as the account's default (see the module docstring)."""

    def __init__(
        self,
        line: LineClient,
        get_config: Callable[[], Awaitable[SoudanConfig]],
        store_db: Any,
        facts: Facts,
        *,
        font: Path | None = None,
        check_interval: float = 300.0,
        backoff_first: float = 5.0,
        backoff_cap: float = 600.0,
        holder: str | None = None,
        ready: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.ready = ready
        self.line = line
        self.get_config = get_config
        self.db = store_db
        self.facts = facts
        self.font = font
        self.check_interval = check_interval
        self.backoff_first = backoff_first
        self.backoff_cap = backoff_cap
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self.current: str | None = None
        """The name of the menu this replica last found or made the default."""
        self.failures = 0

    async def run_forever(self) -> None:
        if self.ready is not None:
            await self.ready()
        delay = self.backoff_first
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                error = str(exc)[:300]
                log.warning(
                    "rich_menu_not_applied",
                    error=error,
                    attempt=self.failures,
                    retry_in_seconds=delay,
                )
                await self._alert(error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_cap)
                continue
            delay = self.backoff_first
            await asyncio.sleep(self.check_interval)

    async def run_once(self) -> str | None:
        """Make the configured menu the default if it is not; the id of a menu applied."""
        config = await self.get_config()
        wanted = menu_definition(config)["name"]
        if wanted == self.current:
            return None
        if not await acquire_lease(self.db, LEASE, self.holder, timedelta(minutes=5)):
            return None  # another replica is on it; looked at again at the next check
        previous = await self.line.default_rich_menu()
        applied = await ensure(self.line, config, find_font(self.font))
        self.current = wanted
        self.failures = 0
        if applied is not None:
            await self.facts.publish(
                RICH_MENU_APPLIED,
                {"rich_menu_id": applied, "previous": previous, "name": wanted},
                cause=f"richmenu:{applied}",
            )
        return applied

    async def _alert(self, error: str, retry_in: float) -> None:
        try:
            await self.facts.publish(
                RICH_MENU_FAILED,
                {"error": error, "attempt": self.failures, "retry_in_seconds": retry_in},
            )
        except Exception:  # the broker is down too: the log line above is the alert
            log.warning("rich_menu_alert_not_published")
