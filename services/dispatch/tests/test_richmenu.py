"""The rich menu: drawn from the configuration within LINE's rules, applied as the default."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image
from soudan_dispatch.line import LineClient, TokenSource
from soudan_dispatch.richmenu import (
    MAX_IMAGE_BYTES,
    RichMenuError,
    apply,
    find_font,
    menu_definition,
    render,
)
from soudan_fakeline import FakeLineServer
from soudan_shared.config import SoudanConfig, load_config

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

CONFIG_DIR = Path(__file__).resolve().parents[3] / "deploy" / "config"


@pytest.fixture(scope="module")
def config() -> SoudanConfig:
    return load_config(CONFIG_DIR)


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


def test_the_image_is_the_menus_size_and_under_a_megabyte(config: SoudanConfig) -> None:
    image, mime = render(config, find_font())
    assert mime in ("image/png", "image/jpeg")
    assert len(image) <= MAX_IMAGE_BYTES
    assert Image.open(io.BytesIO(image)).size == (2500, 1686)


def test_a_missing_font_is_named_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(RichMenuError, match="does not exist"):
        find_font(tmp_path / "nope.ttf")


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
