"""The console's form for the account's fixed texts (``messages.yaml``): its fields grouped with
Japanese labels and hints, what the admin typed read back into a validated
:class:`~soudan_shared.config.MessagesConfig` (choice keys never change, only labels), and each
problem said in Japanese next to its field."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError
from soudan_shared.config import LINE_QUICK_REPLY_LABEL_MAX, LINE_TEXT_MAX, MessagesConfig


@dataclass(frozen=True)
class MessageField:
    """One input of the messages form.

    ``name`` is the form field and the dotted path in :class:`MessagesConfig`; inside a list of
    choices a part is the choice's ``key`` (``checkin.choices.good.label``), so a key is never a
    form input and cannot be changed here. ``placeholders`` are the ``{…}`` a template may use;
    a text without them is sent as is. ``kind``: ``text`` (a textarea), ``line`` (one line),
    ``minutes`` (a whole number; ``optional`` lets it be empty, meaning never), ``clock``
    (HH:MM), ``switch`` (yes or no), ``url`` (``optional``: empty means none).
    """

    name: str
    label: str
    hint: str = ""
    kind: Literal["text", "line", "minutes", "clock", "switch", "url"] = "text"
    max_length: int = LINE_TEXT_MAX
    rows: int = 5
    placeholders: tuple[str, ...] = ()
    optional: bool = False
    choices: tuple[tuple[str, str], ...] = ()  # a switch's (value, label)


_SEND = (("true", "送る"), ("false", "送らない"))
_WAIT = ("ahead", "wait")
_WAIT_HINT = (
    "{ahead} はその人の前に待っている人数、{wait} はお返事までの見込み時間"
    "（「20分ほど」「1時間30分ほど」など。短く見えないよう切り上げます）に置きかわります。"
    "どちらも使わなくてもかまいません。"
)
_NEXT_OPEN_HINT = "{next_open} は次に相談できる日時（例:「4月10日（木）17:00」）に置きかわります。"


def _choice_fields(
    messages: MessagesConfig,
) -> tuple[tuple[MessageField, ...], tuple[MessageField, ...]]:
    """The label (and reply) inputs of the school-type and check-in buttons, one per choice
    configured now, named by the choice's key."""
    school = tuple(
        MessageField(
            f"school_type.choices.{c.key}.label",
            f"学校の種類のボタン{n}の文字" + ("（対象外の学校）" if not c.eligible else ""),
            f"20文字まで。記録には「{c.key}」という名前で残るため、この名前は変えられません。",
            kind="line",
            max_length=LINE_QUICK_REPLY_LABEL_MAX,
        )
        for n, c in enumerate(messages.school_type.choices, 1)
    )
    checkin = tuple(
        field
        for n, c in enumerate(messages.checkin.choices, 1)
        for field in (
            MessageField(
                f"checkin.choices.{c.key}.label",
                f"問いかけのボタン{n}の文字",
                f"20文字まで。記録と月報には「{c.key}」という名前で残るため、"
                "この名前は変えられません。",
                kind="line",
                max_length=LINE_QUICK_REPLY_LABEL_MAX,
            ),
            MessageField(
                f"checkin.choices.{c.key}.reply",
                f"問いかけのボタン{n}が押されたときの返事",
                rows=3,
            ),
        )
    )
    return school, checkin


def message_groups(messages: MessagesConfig) -> tuple[tuple[str, tuple[MessageField, ...]], ...]:
    """The messages form: headings and their inputs, in the order a student meets the texts."""
    school_choices, checkin_choices = _choice_fields(messages)
    return (
        (
            "友だち追加されたとき",
            (
                MessageField(
                    "follow.greeting",
                    "友だち追加のあいさつ",
                    "友だち追加されたときに最初に送ります。",
                ),
                MessageField(
                    "follow.policy",
                    "運用ポリシー",
                    "あいさつのすぐあとに送ります。リッチメニューの「運用ポリシー」を押したときも、"
                    "この文を送ります。",
                ),
                MessageField(
                    "inquiry",
                    "使い方の問い合わせ先の案内",
                    "友だち追加のとき、運用ポリシーのあとに送ります。",
                ),
                MessageField(
                    "school_type.question",
                    "学校の種類の質問",
                    "運用ポリシーのあとに、下のボタンといっしょに送ります。",
                ),
                *school_choices,
                MessageField(
                    "school_type.answered_eligible", "学校の種類を答えてくれた人へ（対象の学校）"
                ),
                MessageField(
                    "school_type.answered_not_eligible",
                    "学校の種類を答えてくれた人へ（対象外の学校）",
                ),
            ),
        ),
        (
            "自動応答",
            (
                MessageField(
                    "auto_reply.out_of_hours",
                    "受付時間外の自動応答",
                    _NEXT_OPEN_HINT + "消さないでください。",
                    placeholders=("next_open",),
                ),
                MessageField(
                    "auto_reply.out_of_hours_urgent",
                    "受付時間外に緊急キーワードがあったときの自動応答",
                    "{next_open} は使っても使わなくてもかまいません。",
                    placeholders=("next_open",),
                ),
                MessageField(
                    "auto_reply.no_next_open",
                    "次に相談できる日時が決まっていないときの文",
                    "相談期間の設定がなく、次に相談できる日時が決まらないときに、"
                    "{next_open} のかわりに入ります。",
                    rows=2,
                ),
                MessageField(
                    "auto_reply.congested",
                    "混雑しているときの自動応答",
                    _WAIT_HINT + "緊急の相談には送りません。",
                    placeholders=_WAIT,
                ),
                MessageField(
                    "auto_reply.wait_notice",
                    "待ち時間のお知らせ",
                    "受付時間内に始まった相談を、下の分数がたってもだれも受けていないとき、"
                    "1回だけ送ります（緊急の相談と、混雑の自動応答を受け取った人には送りません）。"
                    + _WAIT_HINT,
                    placeholders=_WAIT,
                ),
                MessageField(
                    "auto_reply.wait_notice_first",
                    "待ち時間のお知らせ（前に待っている人がいないとき）",
                    "前に待っている人がいないときは、上の文のかわりにこの文を送ります。"
                    "見込み時間は書きません。",
                    rows=3,
                ),
                MessageField(
                    "auto_reply.wait_notice_after_minutes",
                    "待ち時間のお知らせを送るまでの時間（分）",
                    "空にすると、待ち時間のお知らせは送りません。",
                    kind="minutes",
                    optional=True,
                ),
                MessageField("auto_reply.media_refused", "画像やスタンプが届いたときの自動応答"),
                MessageField(
                    "auto_reply.media_refused_interval_minutes",
                    "画像やスタンプへの自動応答の間隔（分）",
                    "続けて届いても、同じ人にはこの分数に1回だけ返します。",
                    kind="minutes",
                ),
            ),
        ),
        (
            "リッチメニュー（トーク画面の下のメニュー）",
            (
                MessageField(
                    "rich_menu.chat_bar_text",
                    "メニューを開くところの文字",
                    "14文字まで。変えると、数分のうちにLINEのメニューが作り直されます。",
                    kind="line",
                    max_length=14,
                ),
                *(
                    MessageField(
                        f"rich_menu.labels.{key}",
                        f"ボタンの文字（{what}）",
                        "12文字まで。",
                        kind="line",
                        max_length=12,
                    )
                    for key, what in (
                        ("consult", "相談する"),
                        ("hours", "相談できる時間"),
                        ("policy", "運用ポリシー"),
                        ("inquiry", "お問い合わせ"),
                    )
                ),
                MessageField(
                    "rich_menu.inquiry_url",
                    "「お問い合わせ」で開くページのアドレス",
                    "https:// で始まるアドレスです。空にすると、「使い方の問い合わせ先の案内」"
                    "の文にある https:// のアドレスを開きます。",
                    kind="url",
                    max_length=2000,
                    optional=True,
                ),
                MessageField(
                    "menu.hours",
                    "「相談できる時間」を押したときの返事",
                    "{hours} は相談期間・受付時間・休みの日の案内（受付時間の設定から作ります）、"
                    "{status} は下の2つの文のどちらか（受付中かどうか）に置きかわります。"
                    "どちらも使わなくてもかまいません。",
                    placeholders=("hours", "status"),
                ),
                MessageField(
                    "menu.open_now",
                    "{status} に入る文（受付中のとき）",
                    rows=2,
                ),
                MessageField(
                    "menu.next_open",
                    "{status} に入る文（受付していないとき）",
                    _NEXT_OPEN_HINT + "消さないでください。",
                    rows=2,
                    placeholders=("next_open",),
                ),
            ),
        ),
        (
            "相談のあとの問いかけ",
            (
                MessageField(
                    "checkin.enabled",
                    "相談のあとの問いかけを",
                    "相談員が「終了する」を押したあと、1回だけ送ります。"
                    "緊急対応をした相談には送りません。",
                    kind="switch",
                    choices=_SEND,
                ),
                MessageField(
                    "checkin.question",
                    "問いかけの文",
                    "下のボタンといっしょに送ります。",
                    rows=3,
                ),
                *checkin_choices,
                MessageField(
                    "checkin.out_of_scope",
                    "対象外の学校の人の相談にも",
                    kind="switch",
                    choices=_SEND,
                ),
                MessageField(
                    "checkin.quiet_hours.start",
                    "送らない時間（寝ている時間）のはじまり",
                    "この時間のあいだに終わった相談には、おわりの時刻になってから送ります"
                    "（それまでに新しいメッセージが届いたときは送りません）。",
                    kind="clock",
                ),
                MessageField(
                    "checkin.quiet_hours.end",
                    "送らない時間（寝ている時間）のおわり",
                    "はじまりとおわりを同じ時刻にすると、いつでも送ります。",
                    kind="clock",
                ),
            ),
        ),
        (
            "一斉送信",
            (
                MessageField(
                    "broadcast.period_notice",
                    "一斉送信：相談期間・時間のお知らせ",
                    "{period} は送るときに入れる期間と時間になります。消さないでください。",
                    placeholders=("period",),
                ),
                MessageField("broadcast.open_now", "一斉送信：相談開始のお知らせ"),
            ),
        ),
    )


_FORM_TEXT_MAX = 4 * LINE_TEXT_MAX  # bounds what is read; the model says what is too long
_LIST_LABELS = {
    "school_type.choices": "学校の種類のボタン",
    "checkin.choices": "相談のあとの問いかけのボタン",
}


def _dig(data: Any, parts: list[str]) -> Any:
    """The value at ``parts`` of a dumped config; a part inside a list is an item's ``key``."""
    for part in parts:
        if isinstance(data, list):
            data = next((item for item in data if item.get("key") == part), None)
        elif isinstance(data, dict):
            data = data.get(part)
        if data is None:
            return None
    return data


def _shown(field: MessageField, value: Any) -> str:
    if value is None:
        return ""
    if field.kind == "switch":
        return "true" if value else "false"
    return str(value)


def _read(field: MessageField, raw: str) -> Any:
    """The posted text as the model's value; ``ValueError`` (Japanese) when it cannot be."""
    if field.kind in ("text", "line"):
        text = raw.replace("\r\n", "\n")
        if not field.placeholders and (found := re.search(r"\{[A-Za-z_]\w*\}", text)):
            raise ValueError(
                f"この文では {found[0]} は置きかわらず、そのまま生徒に届きます。消してください。"
            )
        return text
    text = raw.strip()
    if field.kind == "switch":
        if text not in ("true", "false"):
            raise ValueError("「送る」か「送らない」を選んでください。")
        return text == "true"
    if field.optional and not text:
        return None
    if field.kind == "minutes":
        try:
            return int(text)
        except ValueError:
            raise ValueError("1以上の数（分）を、数字だけで入れてください。") from None
    return text  # clock and url: the model checks them


def _problem(err: Any, data: dict[str, Any], labels: dict[str, str]) -> tuple[str, str]:
    """One pydantic error as (field name, Japanese sentence for the section's staff)."""
    parts = []
    node: Any = data
    for part in err["loc"]:
        if isinstance(part, int) and isinstance(node, list) and part < len(node):
            node = node[part]
            parts.append(str(node.get("key", part)))
        else:
            node = node.get(part) if isinstance(node, dict) else None
            parts.append(str(part))
    name = ".".join(parts)
    label = labels.get(name) or _LIST_LABELS.get(name) or name
    kind, message = err["type"], err["msg"].removeprefix("Value error, ")
    ctx = err.get("ctx") or {}
    if kind == "string_too_short":
        text = "空にはできません。文を入れてください。"
    elif kind == "string_too_long":
        now = len(str(err.get("input", "")).strip())
        text = f"{ctx.get('max_length')}文字までにしてください（いま{now}文字です）。"
    elif kind == "string_pattern_mismatch":
        text = "https:// で始まるアドレスを、空白を入れずに書いてください。"
    elif kind in ("greater_than", "int_type", "int_parsing"):
        text = "1以上の数（分）を入れてください。"
    elif found := re.match(r"unknown placeholder (\{\w*\}) \(allowed: (.*)\)$", message):
        allowed = found[2].replace(", ", "、")
        text = (
            f"{found[1]} は使えません。"
            + (f"使えるのは {allowed} だけです。" if allowed != "none" else "")
            + "{ } の中の名前を直してください。"
        )
    elif found := re.match(r"missing placeholder (.*)$", message):
        text = f"{found[1]} を消さないでください（送るときに置きかわる大事なところです）。"
    elif "literal brace" in message:
        text = (
            "{ と } の組み合わせが正しくありません。"
            "{ } そのものを書きたいときは {{ }} と書いてください。"
        )
    elif found := re.match(r"duplicate label '(.*)'$", message):
        text = f"同じ文字のボタンがあります（「{found[1]}」）。ちがう文字にしてください。"
    elif "time of day" in message:
        text = "時刻は 21:30 のように、0:00〜23:59 で入れてください。"
    else:
        text = f"このままでは使えません（{message}）。"
    return name, f"{label}: {text}"


MESSAGES_NOT_SAVED = "保存できませんでした。次のところを直してください（まだ保存していません）。"


class MessagesFormError(Exception):
    def __init__(self, problems: list[str], bad: set[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
        self.bad = bad


def messages_from_form(current: MessagesConfig, form: Any) -> MessagesConfig:
    """The messages in force with the posted inputs put in, validated as a whole by the model.

    An input the form did not send keeps its value; a choice's key is never read from the form.
    :class:`MessagesFormError` lists what to fix, in Japanese.
    """
    data = copy.deepcopy(current.model_dump(mode="json"))
    fields = [f for _, group in message_groups(current) for f in group]
    labels = {f.name: f.label for f in fields}
    problems: list[str] = []
    bad: set[str] = set()
    for field in fields:
        if field.name not in form:
            continue
        *parents, leaf = field.name.split(".")
        node = _dig(data, parents)
        if not isinstance(node, dict):
            continue
        try:
            node[leaf] = _read(field, str(form[field.name])[:_FORM_TEXT_MAX])
        except ValueError as exc:
            problems.append(f"{field.label}: {exc}")
            bad.add(field.name)
    if not problems:
        try:
            return MessagesConfig.model_validate(data)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                name, sentence = _problem(err, data, labels)
                problems.append(sentence)
                bad.add(name)
    raise MessagesFormError(problems, bad)


def message_inputs(
    messages: MessagesConfig, posted: Any = None
) -> list[tuple[str, list[tuple[MessageField, str]]]]:
    """The form's groups with each input's text: what is in force, or what was posted."""
    data = messages.model_dump(mode="json")
    out = []
    for title, group in message_groups(messages):
        rows = []
        for field in group:
            if posted is not None and field.name in posted:
                text = str(posted[field.name]).replace("\r\n", "\n")
            else:
                text = _shown(field, _dig(data, field.name.split(".")))
            rows.append((field, text))
        out.append((title, rows))
    return out
