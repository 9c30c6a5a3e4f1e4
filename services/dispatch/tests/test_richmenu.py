"""The rich menu: drawn from the configuration within LINE's rules, applied as the default."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from soudan_dispatch.app import RICH_MENU
from soudan_dispatch.line import LineClient, TokenSource
from soudan_dispatch.richmenu import (
    FONT_CANDIDATES,
    MAX_IMAGE_BYTES,
    RichMenuError,
    RichMenuKeeper,
    apply,
    find_font,
    menu_definition,
    render,
)
from soudan_dispatch.settings import DispatchSettings
from soudan_fakeline import FakeLineServer
from soudan_fakeline.platform import RICHMENU as RICHMENU_ENDPOINT
from soudan_shared.config import SoudanConfig, load_config
from soudan_shared.contracts import Message
from soudan_shared.fact_types import RICH_MENU_APPLIED, RICH_MENU_FAILED
from soudan_shared.facts import Facts
from soudan_shared.testing.waiting import wait_until

from .conftest import FactLog, running_dispatch

pytestmark = [pytest.mark.timeout(60)]

CONFIG_DIR = Path(__file__).resolve().parents[3] / "deploy" / "config"


@pytest.fixture(scope="module")
def config() -> SoudanConfig:
    return load_config(CONFIG_DIR)


@pytest.mark.unit
def test_the_menu_has_the_four_entries_with_the_postbacks_triage_answers(
    config: SoudanConfig,
) -> None:
    menu = menu_definition(config)
    actions = [area["action"] for area in menu["areas"]]
    assert [a.get("data") for a in actions] == ["menu=consult", "menu=hours", "menu=policy", None]
    assert actions[3] == {
        "label": "お問い合わせ",
        "type": "uri",
        "uri": "https://www.example.jp/soudan/inquiry/",
    }
    assert menu["size"] == {"width": 2500, "height": 1686}
    assert len(menu["chatBarText"]) <= 14


@pytest.mark.unit
def test_the_image_is_the_menus_size_and_under_a_megabyte(config: SoudanConfig) -> None:
    image, mime = render(config, find_font())
    assert mime in ("image/png", "image/jpeg")
    assert len(image) <= MAX_IMAGE_BYTES
    assert Image.open(io.BytesIO(image)).size == (2500, 1686)


@pytest.mark.unit
def test_a_missing_font_is_named_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(RichMenuError, match="does not exist"):
        find_font(tmp_path / "nope.ttf")


@pytest.mark.unit
async def test_apply_creates_uploads_and_makes_it_the_default_replacing_the_old_one(
    config: SoudanConfig, line: FakeLineServer
) -> None:
    client = LineClient(line.url, line.url, TokenSource("test-access-token"))
    try:
        first = await apply(client, config, find_font())
        second = await apply(client, config, find_font())
    finally:
        await client.close()
    assert line.fake.default_rich_menu == second
    assert set(line.fake.rich_menus) == {second}
    assert first != second
    assert line.fake.rich_menus[second].image is not None


# -- applied at start ----------------------------------------------------------------------------

FONT = next(
    (
        p
        for p in (*FONT_CANDIDATES, Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"))
        if p.is_file()
    ),
    None,
)
"""Any font draws the test menus (glyphs are not what these tests check)."""


def _relabelled(config: SoudanConfig, hours: str) -> SoudanConfig:
    menu = config.messages.rich_menu
    labels = menu.labels.model_copy(update={"hours": hours})
    messages = config.messages.model_copy(
        update={"rich_menu": menu.model_copy(update={"labels": labels})}
    )
    return config.model_copy(update={"messages": messages})


class _Published:
    def __init__(self) -> None:
        self.facts: list[Message] = []

    async def publish(self, message: Message, *, timeout: float | None = None) -> None:
        self.facts.append(message)


@pytest.mark.integration
async def test_a_new_install_gets_its_rich_menu_when_dispatch_starts_and_a_restart_keeps_it(
    dispatch_settings: Callable[..., DispatchSettings], line: FakeLineServer, facts: FactLog
) -> None:
    assert line.fake.default_rich_menu is None
    settings = dispatch_settings(richmenu_auto=True, richmenu_font=FONT)
    async with running_dispatch(settings):
        await wait_until(lambda: line.fake.default_rich_menu, message="a default rich menu")
        await wait_until(lambda: facts.of(RICH_MENU_APPLIED), message="rich_menu_applied")
    applied = line.fake.default_rich_menu
    assert applied is not None
    body = line.fake.rich_menus[applied].body
    postbacks = [area["action"].get("data") for area in body["areas"]]
    assert postbacks == ["menu=consult", "menu=hours", "menu=policy", None]
    assert line.fake.rich_menus[applied].image is not None

    async with running_dispatch(dispatch_settings(richmenu_auto=True, richmenu_font=FONT)) as again:
        keeper = again.app[RICH_MENU]
        await wait_until(lambda: keeper.current, message="the menu checked after the restart")
    assert line.fake.default_rich_menu == applied
    assert set(line.fake.rich_menus) == {applied}
    assert len(facts.of(RICH_MENU_APPLIED)) == 1


@pytest.mark.integration
async def test_dispatch_is_ready_while_line_refuses_the_menu_and_applies_it_when_line_recovers(
    dispatch_settings: Callable[..., DispatchSettings], line: FakeLineServer, facts: FactLog
) -> None:
    line.fake.inject(RICHMENU_ENDPOINT, status=500, times=3)
    settings = dispatch_settings(
        richmenu_auto=True,
        richmenu_font=FONT,
        richmenu_backoff_seconds=0.05,
        richmenu_backoff_max_seconds=0.2,
        send_max_attempts=1,
    )
    async with running_dispatch(settings):  # ready (its /readyz answered 200) meanwhile
        failed = await wait_until(lambda: facts.of(RICH_MENU_FAILED), message="the alert fact")
        assert failed[0].data["attempt"] == 1
        await wait_until(lambda: line.fake.default_rich_menu, message="applied after recovery")


@pytest.mark.integration
async def test_a_changed_menu_replaces_the_earlier_soudan_menu_but_not_a_hand_made_one(
    config: SoudanConfig, line: FakeLineServer, db: Any
) -> None:
    assert FONT is not None
    client = LineClient(line.url, line.url, TokenSource("test-access-token"))
    published = _Published()
    current = config

    async def get_config() -> SoudanConfig:
        return current

    try:
        first = await apply(client, config, FONT)
        keeper = RichMenuKeeper(client, get_config, db, Facts(published, "dispatch"), font=FONT)
        assert await keeper.run_once() is None  # the same menu: nothing to do
        current = _relabelled(config, "受付時間")
        second = await keeper.run_once()
        assert second is not None
        assert set(line.fake.rich_menus) == {second} != {first}
        assert line.fake.default_rich_menu == second
        hours_label = line.fake.rich_menus[second].body["areas"][1]["action"]["label"]
        assert hours_label == "受付時間"

        hand_made = await client.create_rich_menu(
            {**menu_definition(config), "name": "school office menu"}
        )
        await client.upload_rich_menu_image(hand_made, *render(config, FONT))
        await client.set_default_rich_menu(hand_made)
        current = _relabelled(config, "相談の時間")
        assert await keeper.run_once() is None
        assert line.fake.default_rich_menu == hand_made
    finally:
        await client.close()
    assert [f.type for f in published.facts] == [RICH_MENU_APPLIED]
