"""The console's pure parts: password policy, second factor, highlighting, diffs, live routing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyotp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from soudan_console.cases import CaseError, clean_texts
from soudan_console.live import Hub
from soudan_console.security import password_expired, password_problem, totp_counter
from soudan_console.views_admin import diff, report_files
from soudan_console.web import CONSOLE, highlight, safe_next, set_session_cookie
from soudan_shared.config import ConfigError
from soudan_shared.config_store import ConfigSource, parse_section_yaml, section_yaml
from soudan_shared.contracts import Fact

pytestmark = pytest.mark.unit

CONFIG_DIR = Path(__file__).resolve().parents[3] / "deploy" / "config"


@pytest.mark.parametrize(("development", "secure"), [(False, True), (True, False)])
def test_the_session_cookie_is_secure_unless_in_development(
    development: bool, secure: bool
) -> None:
    app = web.Application()
    app[CONSOLE] = SimpleNamespace(settings=SimpleNamespace(console_development=development))  # type: ignore[assignment]
    request = make_mocked_request("GET", "/", app=app)
    response = web.Response()
    set_session_cookie(request, response, "token")
    morsel = response.cookies["soudan_session"]
    assert bool(morsel["secure"]) is secure
    assert morsel["httponly"]
    assert morsel["samesite"] == "Strict"


def test_a_password_needs_twelve_characters_and_some_variety() -> None:
    assert password_problem("short", min_length=12) is not None
    assert password_problem("aaaaaaaaaaaaaaaa", min_length=12) is not None
    assert password_problem("me@example.jp", min_length=12, email="ME@example.jp") is not None
    assert password_problem("three words together", min_length=12) is None


@pytest.mark.parametrize(
    ("password", "why"),
    [
        ("password1234", "流出したパスワードの一覧"),
        ("123456789abc", "流出したパスワードの一覧"),
        ("qwertyuiopas", "よく使われるパスワードに似て"),
        ("asdfghjkl;zxcv", "キーボードの並び"),
        ("yamada-taro@example.jp", "メールアドレスと同じ"),
    ],
)
def test_common_leaked_and_keyboard_passwords_are_refused_with_the_reason_in_japanese(
    password: str, why: str
) -> None:
    problem = password_problem(password, min_length=12, email="yamada-taro@example.jp")
    assert problem is not None
    assert why in problem
    assert password_problem("sakura-tsuki-hoshi-42", min_length=12) is None


def test_a_password_expires_after_the_configured_days() -> None:
    now = datetime(2026, 11, 1, tzinfo=UTC)
    assert not password_expired(now - timedelta(days=89), 90, now)
    assert password_expired(now - timedelta(days=90), 90, now)


def test_a_totp_code_is_accepted_for_its_step_and_the_next_clock_drift_only() -> None:
    secret = pyotp.random_base32()
    now = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)
    code = pyotp.TOTP(secret).at(now)
    assert totp_counter(secret, code, now=now) == int(now.timestamp()) // 30
    assert totp_counter(secret, code, now=now + timedelta(seconds=30)) is not None
    assert totp_counter(secret, code, now=now + timedelta(minutes=5)) is None
    assert totp_counter(secret, "12345", now=now) is None


def test_keywords_are_highlighted_and_everything_else_escaped() -> None:
    out = highlight("<b>もう死にたい</b>", ["死に", "死にたい"])
    assert str(out) == "&lt;b&gt;もう<mark>死にたい</mark>&lt;/b&gt;"
    assert str(highlight("abcdef", [], 3)) == "abc…"


def test_direction_overrides_and_invisible_characters_are_shown_as_marks() -> None:
    shown = str(highlight("abc\u202egnp.exe", []))
    assert "\u202e" not in shown
    assert shown.startswith('abc<span class="hidden-char" title="見えない文字 U+202E">[U+202E]')
    assert shown.endswith("</span>gnp.exe")
    for hidden in ("\u200b", "\u2066", "\ufeff", "\u3164", "\x07"):
        assert hidden not in str(highlight(f"a{hidden}b", []))


def test_a_keyword_broken_by_invisible_characters_or_written_in_katakana_is_still_marked() -> None:
    assert str(highlight("もう消\u200bえたい", ["消えたい"])) == (
        'もう<mark>消<span class="hidden-char" title="見えない文字 U+200B">[U+200B]</span>'
        "えたい</mark>"
    )
    assert str(highlight("ｼﾈ", ["しね"])) == "<mark>ｼﾈ</mark>"
    assert str(highlight("リスカした", ["リスカ"])) == "<mark>リスカ</mark>した"


def test_only_local_paths_are_followed_after_login() -> None:
    assert safe_next("/cases/1") == "/cases/1"
    assert safe_next("//evil.example/") == "/"
    assert safe_next("https://evil.example/") == "/"


@pytest.mark.parametrize(
    "target",
    [
        "/\t/evil.example/",
        "/\n/evil.example/",
        "/\r/evil.example/",
        "/\\evil.example/",
        "/ /evil.example/",
        "/\u2028/evil.example/",
        "\t//evil.example/",
        "///evil.example/",
        "/\x00/evil.example/",
        "http:/evil.example/",
    ],
)
def test_a_next_page_that_a_browser_would_read_as_another_host_is_replaced_by_home(
    target: str,
) -> None:
    assert safe_next(target) == "/"
    assert safe_next("/cases/abc?msg=claimed") == "/cases/abc?msg=claimed"


def test_a_settings_diff_names_only_what_changed() -> None:
    before, after = diff({"a": {"b": 1, "c": 2}, "d": [1]}, {"a": {"b": 1, "c": 3}, "d": [1, 2]})
    assert before == {"a.c": 2, "d": [1]}
    assert after == {"a.c": 3, "d": [1, 2]}


def test_only_report_files_are_listed(tmp_path: Path) -> None:
    for name in ("soudan-report-2026-09.xlsx", "soudan-report-2026-10.pdf", "x.pdf"):
        (tmp_path / name).write_bytes(b"x")
    files = report_files(tmp_path)
    assert [f["name"] for f in files] == ["soudan-report-2026-10.pdf", "soudan-report-2026-09.xlsx"]
    assert report_files(tmp_path / "missing") == []


def test_the_reply_box_sends_one_to_five_non_empty_bubbles() -> None:
    assert clean_texts(["こんにちは\r\n", "", "  "]) == ["こんにちは"]
    with pytest.raises(CaseError):
        clean_texts(["", " "])
    with pytest.raises(CaseError):
        clean_texts(["a"] * 6)
    with pytest.raises(CaseError):
        clean_texts(["あ" * 5001])


async def test_live_events_go_only_to_the_roles_that_may_see_them() -> None:
    hub = Hub()
    counselor = hub.connect("c1", "counselor")
    supervisor = hub.connect("s1", "supervisor")
    section = hub.connect("x1", "section")
    await hub.on_fact(Fact(type="case.flagged_urgent", service="triage", data={"case_id": "k"}))
    await hub.on_fact(Fact(type="emergency.raised", service="console", data={"case_id": "k"}))
    events: dict[str, list[Any]] = {}
    for name, client in (("c", counselor), ("s", supervisor), ("x", section)):
        events[name] = []
        while not client.queue.empty():
            events[name].append(client.queue.get_nowait()[0])
    assert events == {"c": ["case"], "s": ["case", "emergency"], "x": []}


async def test_a_stored_section_overrides_its_file_and_a_broken_one_is_ignored() -> None:
    class Collection:
        def __init__(self, docs: list[dict[str, Any]]) -> None:
            self.docs = docs

        def find(self, _: Any) -> Any:
            docs = self.docs

            class Cursor:
                async def to_list(self) -> list[dict[str, Any]]:
                    return docs

            return Cursor()

    docs = [
        {"_id": "keywords", "value": {"extra": ["飛び降り"]}},
        {"_id": "categories", "value": {"categories": []}},
    ]
    source = ConfigSource(CONFIG_DIR, {"config_overrides": Collection(docs)}, ttl=0)
    config = await source.get()
    assert config.keywords.extra == ("飛び降り",)
    assert config.categories == source.files.categories


def test_a_yaml_section_is_checked_like_its_file() -> None:
    with pytest.raises(ConfigError, match=r"categories\.yaml"):
        parse_section_yaml("categories", "categories: [")
    value = parse_section_yaml("categories", "categories:\n  - {key: other, label: その他}\n")
    assert value.model_dump()["categories"][0]["label"] == "その他"


@pytest.mark.parametrize("section", ["hours", "categories", "agencies", "congestion"])
def test_a_section_written_out_as_yaml_has_no_null_and_reads_back_the_same(section: str) -> None:
    files = ConfigSource(CONFIG_DIR, None).files
    value = getattr(files, section)
    if section == "agencies":
        no_phone = value.contacts[0].model_copy(update={"phone": None})
        value = value.model_copy(update={"contacts": (*value.contacts, no_phone)})
    text = section_yaml(value)
    assert "null" not in text
    assert parse_section_yaml(section, text) == value
