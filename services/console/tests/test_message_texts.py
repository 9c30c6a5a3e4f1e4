"""The admin's messages form (/admin/settings/messages): every text the account sends is edited
there, the buttons' labels but never their keys, and a bad edit is refused whole, in Japanese."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from html.parser import HTMLParser
from typing import Any

import pytest
from soudan_console.testing import Browserless, RunningConsole
from soudan_shared import fact_types as F
from soudan_shared.config_store import CONFIG_OVERRIDES, ConfigSource

FORM = "/admin/settings/messages"

# Settings of messages.yaml that the form leaves to the file (when broadcasts go out by
# themselves); everything else that is a text must be an input of the form.
NOT_IN_THE_FORM = {
    "broadcast.schedule.period_notice_at",
    "broadcast.schedule.open_now",
    "broadcast.schedule.audience",
}


class _Inputs(HTMLParser):
    """The form's inputs as a browser would send them: name → value."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self._textarea: str | None = None
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "input" and a.get("name") and a.get("type") != "hidden":
            self.values[a["name"]] = a.get("value", "")
        elif tag == "textarea":
            self._textarea = a["name"]
            self.values[a["name"]] = ""
        elif tag == "select":
            self._select = a["name"]
        elif tag == "option" and self._select and "selected" in a:
            self.values[self._select] = a["value"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "textarea":
            self._textarea = None
        elif tag == "select":
            self._select = None

    def handle_data(self, data: str) -> None:
        if self._textarea:
            self.values[self._textarea] += data


def _inputs(page: str) -> dict[str, str]:
    parser = _Inputs()
    parser.feed(page)
    return parser.values


def _texts(value: Any, prefix: str = "") -> set[str]:
    """Dotted paths of the text leaves of a dumped config, a list's items named by their key."""
    if isinstance(value, dict):
        return {
            path
            for key, item in value.items()
            if key != "key"
            for path in _texts(item, f"{prefix}.{key}" if prefix else key)
        }
    if isinstance(value, list):
        return {path for item in value for path in _texts(item, f"{prefix}.{item['key']}")}
    return {prefix} if isinstance(value, str) else set()


async def _admin(running: RunningConsole, client: Callable[[], Browserless]) -> Browserless:
    admin = await running.add_staff("admin")
    a = client()
    await a.login(admin.email)
    return a


async def test_every_text_of_the_messages_is_in_the_form_and_no_choice_key_is(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    a = await _admin(running, client)
    status, _, page = await a.get(FORM)
    assert status == 200
    inputs = _inputs(page)
    messages = (await running.console.config.get()).messages
    texts = _texts(messages.model_dump(mode="json")) - NOT_IN_THE_FORM
    assert texts - set(inputs) == set()
    assert inputs["checkin.choices.good.label"] == "話してよかった"
    assert inputs["auto_reply.wait_notice"] == messages.auto_reply.wait_notice
    assert not [name for name in inputs if name.endswith(".key")]
    # The key is shown, as the name the records keep, not as something to type.
    assert "記録と月報には「good」という名前で残るため" in page
    assert "{ahead} はその人の前に待っている人数" in page


async def test_an_admin_edits_the_checkin_question_a_button_label_and_the_wait_notice(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    a = await _admin(running, client)
    _, _, page = await a.get(FORM)
    form = _inputs(page)
    form["checkin.question"] = "今日はどうだったかな？\nボタンで教えてね。"
    form["checkin.choices.neutral.label"] = "まあまあ"
    form["auto_reply.wait_notice"] = "届いています。前に{ahead}人、{wait}待つかもしれません。"
    form["auto_reply.wait_notice_after_minutes"] = "15"

    status, where, page = await a.post(FORM, form)
    assert (status, where) == (200, f"{FORM}?msg=saved")
    fact = await running.wait_fact(F.SETTINGS_CHANGED, what="config.messages")
    assert set(fact.data["after"]) == {
        "checkin.question",
        "checkin.choices",
        "auto_reply.wait_notice",
        "auto_reply.wait_notice_after_minutes",
    }
    assert await running.store.db[CONFIG_OVERRIDES].find_one({"_id": "messages"}) is not None
    other = ConfigSource(running.settings.soudan_config_dir, running.store.db, ttl=0)
    messages = (await other.get()).messages
    assert messages.checkin.question == "今日はどうだったかな？\nボタンで教えてね。"
    assert [(c.key, c.label) for c in messages.checkin.choices] == [
        ("good", "話してよかった"),
        ("neutral", "まあまあ"),
        ("bad", "よくなかった"),
    ]
    assert messages.auto_reply.wait_notice.format(ahead=2, wait="20分ほど") == (
        "届いています。前に2人、20分ほど待つかもしれません。"
    )
    assert messages.auto_reply.wait_notice_after_minutes == 15
    assert _inputs(page)["checkin.choices.neutral.label"] == "まあまあ"

    # Left empty, the wait notice is never sent.
    await a.post(FORM, {**_inputs(page), "auto_reply.wait_notice_after_minutes": ""})
    assert (await other.get()).messages.auto_reply.wait_notice_after_minutes is None


@pytest.mark.parametrize(
    ("name", "text", "said"),
    [
        (
            "auto_reply.wait_notice",
            "前に{ahead}人、{name}さん待ってね。",
            "待ち時間のお知らせ: {name} は使えません。使えるのは {ahead}、{wait} だけです。",
        ),
        ("checkin.question", "  \n ", "問いかけの文: 空にはできません。"),
        (
            "checkin.choices.bad.label",
            "あまりよくなかったけど、話してみてよかった",  # 21 characters
            "問いかけのボタン3の文字: 20文字までにしてください（いま21文字です）。",
        ),
        (
            "menu.next_open",
            "次は、また今度ね。",
            "{next_open} を消さないでください",
        ),
        (
            "auto_reply.wait_notice_first",
            "次は{ahead}番目です。",
            "この文では {ahead} は置きかわらず、そのまま生徒に届きます。",
        ),
        ("auto_reply.congested", "混んでいます{ahead", "{ と } の組み合わせが正しくありません。"),
        ("auto_reply.media_refused_interval_minutes", "十分", "数字だけで入れてください。"),
        ("checkin.quiet_hours.start", "25:00", "時刻は 21:30 のように"),
        ("rich_menu.labels.consult", "いますぐ相談をはじめる場所", "12文字までにしてください"),
        ("rich_menu.inquiry_url", "http://example.jp/", "https:// で始まるアドレスを"),
    ],
)
async def test_a_bad_edit_is_refused_in_japanese_with_the_input_kept_and_nothing_stored(
    running: RunningConsole,
    client: Callable[[], Browserless],
    name: str,
    text: str,
    said: str,
) -> None:
    a = await _admin(running, client)
    _, _, page = await a.get(FORM)
    before = (await running.console.config.get()).messages
    form = {**_inputs(page), "checkin.question": "今日はどうだった？", name: text}

    status, _, page = await a.post(FORM, form)
    assert status == 400
    assert "保存できませんでした。次のところを直してください（まだ保存していません）。" in page
    assert html.escape(said, quote=False) in page
    shown = _inputs(page)
    assert shown[name] == text.replace("\r\n", "\n")
    if name != "checkin.question":
        assert shown["checkin.question"] == "今日はどうだった？"  # the other edits are kept too
    assert re.search(f'name="{re.escape(name)}"[^>]*aria-invalid="true"', page), "not marked"
    assert await running.store.db[CONFIG_OVERRIDES].find_one({"_id": "messages"}) is None
    assert (await running.console.config.get()).messages == before


async def test_a_choice_key_cannot_be_changed_through_the_form(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    a = await _admin(running, client)
    _, _, page = await a.get(FORM)
    form = {
        **_inputs(page),
        "checkin.choices.good.label": "話せてよかった",
        "checkin.choices.good.key": "great",
        "checkin.choices.0.key": "great",
        "checkin.choices.great.label": "ちがう",
        "school_type.choices.other.key": "another",
    }
    status, _, _ = await a.post(FORM, form)
    assert status == 200
    messages = (await running.console.config.get()).messages
    assert [(c.key, c.label) for c in messages.checkin.choices] == [
        ("good", "話せてよかった"),
        ("neutral", "ふつう"),
        ("bad", "よくなかった"),
    ]
    assert [c.key for c in messages.school_type.choices] == [
        "public_junior_high",
        "public_high",
        "private",
        "sapporo_city",
        "other",
    ]


async def test_saving_the_form_as_shown_changes_nothing(
    running: RunningConsole, client: Callable[[], Browserless]
) -> None:
    a = await _admin(running, client)
    _, _, page = await a.get(FORM)
    status, where, _ = await a.post(FORM, _inputs(page))
    assert (status, where) == (200, f"{FORM}?msg=saved")
    assert await running.store.db[CONFIG_OVERRIDES].find_one({"_id": "messages"}) is None
