"""The report as labelled tables: what the section reads, in Japanese, before any file format.

:func:`build_report` turns :class:`~soudan_reporting.figures.Figures` into a :class:`Report`
(a summary and one section per topic, each a list of tables, some with a chart). The XLSX and
PDF writers only lay these tables out, so both files show the same figures by construction.

A cell's type says how it is shown: ``int`` a count, :class:`Percent` a ratio, ``float`` minutes
with one decimal, ``str`` text, ``None`` "—" (no data, e.g. the median of no cases); a change
from the previous month (前月比) is signed: :class:`Change` a count, :class:`DecimalChange`
minutes, :class:`PointChange` a ratio in percentage points.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from soudan_shared import fact_types as ft
from soudan_shared.config import (
    DEFAULT_GENDERS,
    DEFAULT_GRADES,
    RISK_CATEGORIES,
    UNKNOWN_LABEL,
    SoudanConfig,
)

from soudan_reporting.figures import (
    NO_SCHOOL_TYPE,
    Durations,
    Figures,
    bucket_bound,
    histogram_percentile,
)
from soudan_reporting.month import WEEKDAYS_JA, Month
from soudan_reporting.recorder import TOKYO


class Percent(float):
    """A ratio (0.873), shown as a percentage (87.3%)."""


class Change(int):
    """A count's change from the previous month, signed (+12, -3, ±0)."""


class DecimalChange(float):
    """A change in minutes from the previous month, signed with one decimal (+1.5)."""


class PointChange(float):
    """A ratio's change from the previous month in percentage points (+2.3ポイント)."""


Cell = str | int | float | None
ChartKind = Literal["column", "bar", "pie"]
OK, CHECK = "適合", "要確認"


def as_text(value: Cell) -> str:
    """How a cell reads as text (in the PDF; the workbook keeps numbers as numbers)."""
    if value is None:
        return "—"
    if isinstance(value, Change):
        return f"{value:+,}" if value else "±0"
    if isinstance(value, DecimalChange):
        return f"{value:+,.1f}" if value else "±0.0"
    if isinstance(value, PointChange):
        return (f"{value:+.1f}" if value else "±0.0") + "ポイント"
    if isinstance(value, Percent):
        return f"{value:.1%}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return value


@dataclass(frozen=True)
class Chart:
    kind: ChartKind
    value_column: int = 1


@dataclass(frozen=True)
class Table:
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    note: str = ""
    chart: Chart | None = None


@dataclass(frozen=True)
class Section:
    sheet: str  # the XLSX sheet name (≤ 31 characters)
    title: str
    tables: tuple[Table, ...]


@dataclass(frozen=True)
class CheckLine:
    rule: str
    requirement: str
    status: str
    evidence: str


@dataclass(frozen=True)
class Report:
    month: Month
    built_at: datetime
    sections: tuple[Section, ...]
    checklist: tuple[CheckLine, ...] = ()

    @property
    def title(self) -> str:
        return f"SNSを活用した相談業務 実績報告書（{self.month.label}）"

    @property
    def built_label(self) -> str:
        return self.built_at.astimezone(TOKYO).strftime("%Y年%m月%d日 %H:%M（日本時間）")


@dataclass(frozen=True)
class Labels:
    """Names from the section's configuration; keys stay in the facts, labels may change."""

    school_types: tuple[tuple[str, str, bool], ...] = ()  # key, label, eligible
    categories: tuple[tuple[str, str], ...] = ()
    grades: tuple[tuple[str, str], ...] = tuple((c.key, c.label) for c in DEFAULT_GRADES)
    genders: tuple[tuple[str, str], ...] = tuple((c.key, c.label) for c in DEFAULT_GENDERS)
    keywords: tuple[str, ...] = ()
    checkin_choices: tuple[tuple[str, str], ...] = ()  # key, label

    @classmethod
    def from_config(cls, config: SoudanConfig) -> Labels:
        return cls(
            checkin_choices=tuple((c.key, c.label) for c in config.messages.checkin.choices),
            school_types=tuple(
                (c.key, c.label, c.eligible) for c in config.messages.school_type.choices
            ),
            categories=tuple((c.key, c.label) for c in config.categories.categories),
            grades=tuple((c.key, c.label) for c in config.categories.grades),
            genders=tuple((c.key, c.label) for c in config.categories.genders),
            keywords=tuple(config.keywords.official) + tuple(config.keywords.extra),
        )


@dataclass(frozen=True)
class Limits:
    password_max_age_days: int = 90
    token_max_age_days: int = 90


PURPOSES = {
    "counselor_reply": "相談員の返信",
    "greeting": "友だち追加のあいさつ",
    "policy": "運用ポリシー",
    "school_type_question": "学校の種類の質問",
    "school_type_answer": "学校の種類の回答へのお礼",
    "out_of_hours": "受付時間外の自動応答",
    "urgent_out_of_hours": "受付時間外の自動応答（緊急の窓口の案内）",
    "congestion": "混雑時の自動応答",
    "media_refused": "画像などへの自動応答（文字だけでお願い）",
    "emergency": "緊急時の案内",
    "menu_hours": "メニュー「受付時間」への案内",
    "menu_inquiry": "メニュー「問い合わせ」への案内",
    "wait_notice": "待ち時間のお知らせ",
    "checkin": "終わったあとの問いかけ",
    "checkin_thanks": "問いかけへの答えへのお礼",
    "other": "その他",
}
CHECKIN_SKIPPED = {
    "emergency": "緊急対応をした相談",
    "out_of_scope": "対象外の相談",
    "blocked": "ブロックされた",
    "wrote_again": "寝ている時間のあいだに新しい相談が始まった",
    "disabled": "送らない設定",
}
EMERGENCY_TYPES = {
    "suicide_notice": "自殺予告",
    "child_abuse": "児童虐待",
    "crime_victim": "犯罪被害",
    "other": "その他",
}
CONTACT_RESULTS = {
    "referred": "対応を依頼した",
    "consulted": "相談した",
    "no_answer": "つながらなかった",
    "callback": "折り返し待ち",
}
SIGNATURE_REASONS = {"missing": "署名がない", "mismatch": "署名が一致しない"}
LOGIN_FAILURES = {
    "bad_password": "パスワードの誤り",
    "throttled": "同じ接続元からの失敗が多く一時受付停止",
    "unknown_account": "登録のないアカウント",
    "unknown_user": "登録のないアカウント",
    "locked": "ロック中のアカウント",
    "disabled": "停止したアカウント",
    "second_factor": "二要素認証の誤り",
    "bad_totp": "二要素認証の誤り",
    "expired": "パスワードの期限切れ",
}
ROLES = {
    "counselor": "相談員",
    "supervisor": "スーパーバイザー",
    "admin": "管理者",
    "section": "生徒指導・学校安全課",
}
STAFF_CHANGES = {
    "created": "アカウント作成",
    "disabled": "アカウント停止",
    "enabled": "アカウント再開",
    "role_changed": "役割の変更",
}
SERVICES = {
    "ingress": "受信（ingress）",
    "triage": "振り分け（triage）",
    "dispatch": "送信（dispatch）",
    "console": "コンソール（console）",
    "reporting": "記録・報告（reporting）",
}
SETTINGS = {
    "hours": "相談の期間と受付時間・休みの日",
    "messages": "自動で送るメッセージ",
    "keywords": "緊急のキーワード",
    "congestion": "混雑の判定",
    "agencies": "緊急時の連絡先",
    "categories": "相談の分類",
    "canned": "定型の返信",
    "canned_responses": "定型の返信（追加・削除）",
    "broadcast": "一斉送信の停止・再開",
    "broadcasts": "一斉送信",
    "staff": "職員アカウントのロック解除",
    "security.totp_required_roles": "二要素認証を必ず使う役割",
}
SYSTEM_ACTORS = {"bootstrap": "初期設定（最初の管理者）"}
UNKNOWN = "（不明）"


def build_report(
    figures: Figures,
    *,
    labels: Labels,
    limits: Limits,
    built_at: datetime,
    previous: Figures | None = None,
) -> Report:
    """The report of ``figures``' month; ``previous`` is the month before, computed the same
    way, for the summary's 前月比 (None when nothing was recorded that month: shown as —)."""
    month = Month.parse(figures.month)
    checklist = _checklist(figures, limits)
    before = None if previous is None else (previous, _checklist(previous, limits))
    sections = (
        _summary(figures, checklist, month, before),
        _registrations(figures, labels),
        _cases(figures, labels, month),
        _urgent(figures, labels),
        _auto_and_broadcasts(figures),
        _security(figures, limits, checklist),
        _system(figures),
    )
    return Report(month=month, built_at=built_at, sections=sections, checklist=checklist)


# -- helpers ----------------------------------------------------------------------------------


def _minutes(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds / 60, 1)


def _duration_row(label: str, d: Durations) -> tuple[Cell, ...]:
    return (label, d.n, _minutes(d.p50), _minutes(d.p90))


def _ratio(part: int, whole: int) -> Percent | None:
    return Percent(part / whole) if whole else None


def _label(key: str, names: dict[str, str]) -> str:
    if key == "":
        return UNKNOWN
    return names.get(key, key)


def _keyed_rows(
    counts: dict[str, int],
    known: list[tuple[str, str]] | None = None,
    names: dict[str, str] | None = None,
) -> tuple[tuple[Cell, ...], ...]:
    """One row per known key (zeros included, in order), then the others by count, named by
    ``names`` where it knows them."""
    known = known or []
    rows: list[tuple[Cell, ...]] = [(label, counts.get(key, 0)) for key, label in known]
    seen = {key for key, _ in known}
    others = sorted((k for k in counts if k not in seen), key=lambda k: (-counts[k], k))
    rows += [(_label(k, names or {}), counts[k]) for k in others]
    return tuple(rows)


def _school_types(labels: Labels) -> list[tuple[str, str]]:
    return [(key, label) for key, label, _ in labels.school_types] + [(NO_SCHOOL_TYPE, "未回答")]


def _who(f: Figures, staff_id: str) -> str:
    """A staff member as the section knows them: the display name, with the account id."""
    if not staff_id:
        return UNKNOWN
    if staff_id in SYSTEM_ACTORS:
        return SYSTEM_ACTORS[staff_id]
    name = f.staff_names.get(staff_id)
    return f"{name}（{staff_id}）" if name else staff_id


def setting_label(what: str) -> str:
    """The Japanese name of a changed setting: ``config.hours``, ``canned_responses.<id>``,
    ``staff.<id>.locked``, ``broadcast.<id>.state`` and the like are named by what they are,
    not by their key (an item's id means nothing to the section)."""
    if what in SETTINGS:
        return SETTINGS[what]
    head, _, rest = what.partition(".")
    if head == "config" and rest in SETTINGS:
        return SETTINGS[rest]
    return SETTINGS.get(head, what or UNKNOWN)


def _settings_rows(counts: dict[str, int]) -> tuple[tuple[Cell, ...], ...]:
    by_label: dict[str, int] = {}
    for what, n in counts.items():
        label = setting_label(what)
        by_label[label] = by_label.get(label, 0) + n
    return tuple(sorted(by_label.items(), key=lambda row: (-row[1], row[0])))


def _day(instant: datetime | None) -> str | None:
    return instant.astimezone(TOKYO).strftime("%Y-%m-%d") if instant else None


def _ms_label(bound: float | None, last_bound: float | None) -> str | None:
    if bound is None:
        return None
    if bound == float("inf"):
        return f"{last_bound:g} ms超" if last_bound is not None else "上限なし"
    return f"{bound:g} ms以下"


# -- checklist of rule 第7 --------------------------------------------------------------------


def _checklist(f: Figures, limits: Limits) -> tuple[CheckLine, ...]:
    lines = []
    limit = limits.password_max_age_days
    over = [s for s in f.staff if s.password_age_days is None or s.password_age_days > limit]
    if not f.staff:
        status, evidence = CHECK, "職員アカウントの記録がありません"
    elif over:
        status = CHECK
        names = "、".join(f"{_who(f, s.staff_id)}: {s.password_age_days}日" for s in over)
        evidence = f"職員{len(f.staff)}名のうち{len(over)}名が{limit}日を超えています: {names}"
    else:
        oldest = max(s.password_age_days or 0 for s in f.staff)
        status = OK
        evidence = f"職員{len(f.staff)}名すべてが{limit}日以内に変更（最も古いもので{oldest}日）"
    lines.append(
        CheckLine(
            "第7-1", f"職員のパスワードを定期的に（{limit}日以内に）変えている", status, evidence
        )
    )

    without = [_who(f, s.staff_id) for s in f.staff if not s.second_factor]
    with_count = len(f.staff) - len(without)
    evidence = f"職員{len(f.staff)}名のうち{with_count}名が設定済み"
    if without:
        evidence += "。未設定: " + "、".join(without)
    lines.append(
        CheckLine(
            "第7-1",
            "ログインに二要素認証を使っている",
            OK if f.staff and not without else CHECK,
            evidence,
        )
    )

    failures = sum(f.login_failures.values())
    lockouts = sum(f.lockouts.values())
    evidence = f"ログイン成功{f.logins}回、失敗{failures}回、アカウントのロック{lockouts}回"
    if lockouts:
        evidence += (
            "（" + "、".join(_who(f, s) for s in sorted(f.lockouts)) + "）。"
            "ロックされた職員に本人確認をしてください"
        )
    lines.append(
        CheckLine(
            "第7-1",
            "ログインの失敗が続いたアカウントをロックし、不正なログインを防いでいる",
            CHECK if lockouts else OK,
            evidence,
        )
    )

    unattributed = [c for c in f.staff_changes if not c.by]
    counts = {w: sum(c.what == w for c in f.staff_changes) for w in STAFF_CHANGES}
    evidence = (
        f"アカウント作成{counts['created']}件、停止{counts['disabled']}件、"
        f"再開{counts['enabled']}件、役割の変更{counts['role_changed']}件"
    )
    evidence += (
        f"。うち{len(unattributed)}件は実施者の記録がありません"
        if unattributed
        else "。すべて実施者を記録"
    )
    lines.append(
        CheckLine(
            "第7-1",
            "職員のアカウントと権限の変更を、誰が行ったか記録している",
            CHECK if unattributed else OK,
            evidence,
        )
    )

    views = sum(a.case_views for a in f.audit)
    viewers = sum(1 for a in f.audit if a.case_views)
    missing_audit = f.answered_total > 0 and views == 0
    evidence = f"相談記録の閲覧{views}回（職員{viewers}名）を記録"
    if missing_audit:
        evidence = f"相談員が返信した相談が{f.answered_total}件あるのに、閲覧の記録がありません"
    lines.append(
        CheckLine(
            "第7-1",
            "相談記録を誰がいつ見たかを記録している（監査記録）",
            CHECK if missing_audit else OK,
            evidence,
        )
    )

    token = f.token
    token_limit = limits.token_max_age_days
    if token.source is None:
        status = CHECK
        evidence = (
            "静的トークン（発行日不明）。チャネルアクセストークンを定期的に発行し直してください"
        )
        if token.revoked:
            evidence = "トークンの失効が記録され、その後の発行の記録がありません"
    elif token.revoked:
        status, evidence = (
            CHECK,
            "最後に発行したトークンは失効済みで、その後の発行の記録がありません",
        )
    else:
        age = token.age_days if token.age_days is not None else 0
        status = OK if age <= token_limit else CHECK
        evidence = f"{_day(token.issued_at)}に発行、月末で{age}日（{token_limit}日以内が目安）"
        if token.expires_at is not None:
            evidence += f"。有効期限は{_day(token.expires_at)}"
    lines.append(
        CheckLine(
            "第7-1",
            f"LINEのチャネルアクセストークンを定期的に（{token_limit}日以内に）更新している",
            status,
            evidence,
        )
    )

    missing = f.signature_rejected.get("missing", 0)
    mismatch = f.signature_rejected.get("mismatch", 0)
    others = sum(f.signature_rejected.values()) - missing - mismatch
    evidence = f"署名のない要求{missing}件、署名が一致しない要求{mismatch}件を受け付けずに拒否"
    if others:
        evidence += f"（ほか{others}件）"
    if mismatch:
        evidence += (
            "。一致しない署名は、なりすましかチャネルシークレットの設定違いの可能性があります"
        )
    lines.append(
        CheckLine(
            "第7-2",
            "LINEからの通知の署名を確かめ、なりすましを受け付けない",
            CHECK if mismatch else OK,
            evidence,
        )
    )

    lines.append(
        CheckLine(
            "第7-2",
            "保存期間を過ぎた相談の内容を消している",
            OK if f.retention_runs else CHECK,
            f"消去の実行{f.retention_runs}回、消したメッセージ{f.erased_messages}件",
        )
    )
    return tuple(lines)


def _checklist_table(checklist: tuple[CheckLine, ...]) -> Table:
    return Table(
        "情報セキュリティ対策のチェックリスト（運営要領 第7）",
        ("番号", "根拠", "確認すること", "状況", "確認の根拠となる記録"),
        tuple(
            (i, line.rule, line.requirement, line.status, line.evidence)
            for i, line in enumerate(checklist, 1)
        ),
        note="状況が「要確認」の行は、根拠の欄を見て対応を確かめてください。",
    )


# -- sections ---------------------------------------------------------------------------------


def _key_figures(f: Figures, checklist: tuple[CheckLine, ...]) -> list[tuple[str, Cell]]:
    """The summary's figures of one month (this one, or the previous for 前月比)."""
    checks = sum(line.status == CHECK for line in checklist)
    return [
        ("新しく友だち追加した人", f.followed_new),
        ("月末の登録者数", f.registered_end),
        ("相談件数", f.cases_opened),
        ("うち受付時間内", f.cases_in_hours),
        ("応答率（受付時間内）", _ratio(f.answered_in_hours, f.cases_in_hours)),
        ("最初の返信までの時間 中央値（分）", _minutes(f.first_reply.p50)),
        ("終わった相談", f.cases_closed),
        ("うち他の窓口につないだ相談", f.cases_handed_over),
        ("緊急性の高い相談", f.urgent_cases),
        ("緊急対応", sum(f.emergencies_by_type.values())),
        ("受け取ったメッセージ", f.messages_in),
        ("送ったメッセージ", f.messages_out_counselor + f.messages_out_auto),
        ("一斉送信", sum(1 for b in f.broadcasts if b.started_day)),
        ("ログインの失敗", sum(f.login_failures.values())),
        ("チェックリスト 適合", len(checklist) - checks),
        ("チェックリスト 要確認", checks),
    ]


def _change(now: Cell, before: Cell) -> Cell:
    """前月比: this month's value less the previous month's (— when either is missing)."""
    if now is None or before is None or isinstance(now, str) or isinstance(before, str):
        return None
    if isinstance(now, Percent):
        return PointChange(round((now - before) * 100, 1))
    if isinstance(now, float) or isinstance(before, float):
        return DecimalChange(round(now - before, 1))
    return Change(now - before)


def _summary(
    f: Figures,
    checklist: tuple[CheckLine, ...],
    month: Month,
    previous: tuple[Figures, tuple[CheckLine, ...]] | None,
) -> Section:
    now = _key_figures(f, checklist)
    before: list[Cell] = (
        [value for _, value in _key_figures(*previous)] if previous else [None] * len(now)
    )
    key_figures = Table(
        "主な数値",
        ("項目", f"今月（{month.label}）", f"前月（{month.previous().label}）", "前月比（増減）"),
        tuple(
            (label, value, earlier, _change(value, earlier))
            for (label, value), earlier in zip(now, before, strict=True)
        ),
        note="前月比は、今月の値から前月の値を引いた増減です（率はポイント）。前月の値も、"
        "今月と同じ決め方で記録から数えています。"
        + ("" if previous else "前月の記録がないため、前月と前月比は「—」です。"),
    )
    status = Table(
        "チェックリストの結果",
        ("確認すること", "状況"),
        tuple((line.requirement, line.status) for line in checklist),
    )
    return Section("概要", "概要", (key_figures, status))


def _registrations(f: Figures, labels: Labels) -> Section:
    movement = Table(
        "登録の動き",
        ("項目", "人数"),
        (
            ("新しく友だち追加した人", f.followed_new),
            ("ブロックを解除した人", f.followed_unblocked),
            ("ブロックした人", f.unfollowed),
            ("月末の登録者数", f.registered_end),
        ),
    )
    by_school = Table(
        "月末の登録者（学校の種類別）",
        ("学校の種類", "人数"),
        _keyed_rows(f.registered_by_school, _school_types(labels)),
        chart=Chart("pie"),
    )
    eligibility = Table(
        "月末の登録者（相談の対象かどうか）",
        ("区分", "人数"),
        _keyed_rows(
            f.registered_eligible,
            [("yes", "対象"), ("no", "対象外"), ("unknown", "学校の種類が未回答")],
        ),
    )
    answers = Table(
        "今月の学校の種類の回答",
        ("学校の種類", "件数"),
        _keyed_rows(f.school_answers, _school_types(labels)[:-1]),
    )
    return Section("登録状況", "登録状況", (movement, by_school, eligibility, answers))


def _cases(f: Figures, labels: Labels, month: Month) -> Section:
    counts = Table(
        "相談の件数",
        ("項目", "値"),
        (
            ("相談件数（始まった相談）", f.cases_opened),
            ("うち受付時間内", f.cases_in_hours),
            ("うち受付時間外", f.cases_opened - f.cases_in_hours),
            ("うち対象外（対象の学校以外）", f.cases_out_of_scope),
            ("うち始めから緊急", f.cases_urgent_at_open),
            ("終わった相談", f.cases_closed),
            ("受け取ったメッセージ", f.messages_in),
            ("送ったメッセージ（相談員）", f.messages_out_counselor),
            ("送ったメッセージ（自動応答など）", f.messages_out_auto),
            ("相談員が返信した相談", f.answered_total),
            ("うち受付時間内に始まった相談", f.answered_in_hours),
            ("応答率（受付時間内）", _ratio(f.answered_in_hours, f.cases_in_hours)),
        ),
        note="応答率＝受付時間内に始まった相談のうち相談員が返信したもの÷受付時間内に始まった相談。",
    )
    times = Table(
        "返信までの時間・待ち時間・相談時間（分）",
        ("項目", "件数", "中央値", "90パーセンタイル"),
        (
            _duration_row("最初の返信までの時間（受付時間内）", f.first_reply),
            _duration_row("最初の返信までの時間（緊急・受付時間内）", f.first_reply_urgent),
            _duration_row("待ち時間（相談員が担当するまで・受付時間内）", f.waiting),
            _duration_row("相談時間（始まりから終わりまで）", f.length),
        ),
        note="今月始まった相談について、翌月に入ってからの返信や終了も含めて計算しています。",
    )
    by_day = Table(
        "日別の相談件数",
        ("日付", "件数"),
        tuple(
            (
                f"{d.month}/{d.day}（{WEEKDAYS_JA[d.isoweekday() - 1]}）",
                f.opened_by_day.get(d.isoformat(), 0),
            )
            for d in month.days()
        ),
        chart=Chart("column"),
    )
    by_weekday = Table(
        "曜日別の相談件数",
        ("曜日", "件数"),
        tuple((w, f.opened_by_weekday.get(i, 0)) for i, w in enumerate(WEEKDAYS_JA, 1)),
        chart=Chart("column"),
    )
    by_hour = Table(
        "時間帯別の相談件数",
        ("時間帯", "件数"),
        tuple((f"{h}時台", f.opened_by_hour.get(h, 0)) for h in range(24)),
        chart=Chart("column"),
    )
    by_category = Table(
        "分類別（今月終わった相談）",
        ("分類", "件数"),
        _keyed_rows(
            f.closed_by_category,
            [*labels.categories, *([("", UNKNOWN_LABEL)] if "" in f.closed_by_category else [])],
        ),
        note="1つの相談に複数の分類があるときは、それぞれに数えています"
        "（合計は終わった相談の件数より多くなることがあります）。"
        f"分類を記録しなかった相談は「{UNKNOWN_LABEL}」に数えています。",
        chart=Chart("bar"),
    )
    attributes_note = (
        "学年と性別は、相談を終えるときに相談員が記録します。記録しなかった相談"
        f"（記録を始める前に終わった相談も）は「{UNKNOWN_LABEL}」に数えています。"
    )
    by_grade = Table(
        "学年別（今月終わった相談）",
        ("学年", "件数"),
        _keyed_rows(f.closed_by_grade, [*labels.grades, ("", UNKNOWN_LABEL)]),
        note=attributes_note,
        chart=Chart("bar"),
    )
    by_gender = Table(
        "性別別（今月終わった相談）",
        ("性別", "件数"),
        _keyed_rows(f.closed_by_gender, [*labels.genders, ("", UNKNOWN_LABEL)]),
        note=attributes_note,
        chart=Chart("pie"),
    )
    handed_over = Table(
        "他の窓口につないだ件数（今月終わった相談）",
        ("項目", "件数"),
        (
            ("終わった相談", f.cases_closed),
            ("うち他の窓口につないだ相談", f.cases_handed_over),
            ("他の窓口につないだ割合", _ratio(f.cases_handed_over, f.cases_closed)),
        ),
        note="相談を終えるときに、相談員がほかの相談窓口や関係機関につないだと記録した相談です。",
    )
    by_school = Table(
        "学校の種類別の相談件数",
        ("学校の種類", "件数"),
        _keyed_rows(f.opened_by_school, _school_types(labels)),
        chart=Chart("bar"),
    )
    answered = sum(f.checkin_answers.values())
    checkin = Table(
        "終わったあとの問いかけ",
        ("項目", "件数"),
        (
            ("送った問いかけ", f.checkin_sent),
            ("答えてくれた相談", answered),
            ("答えてくれた割合", _ratio(answered, f.checkin_sent)),
            *(
                (f"送らなかった（{CHECKIN_SKIPPED.get(reason, reason)}）", n)
                for reason, n in sorted(f.checkin_skipped.items())
            ),
        ),
        note="相談員が相談を終えたあと、相談者に1回だけ送るひとことの問いかけです。"
        "答えは最初の1回だけを数えます（今月の答え÷今月送った数）。",
    )
    checkin_answers = Table(
        "終わったあとの問いかけへの答え",
        ("答え", "件数"),
        _keyed_rows(f.checkin_answers, list(labels.checkin_choices)),
        chart=Chart("pie"),
    )
    return Section(
        "相談件数",
        "相談件数",
        (
            counts,
            times,
            by_day,
            by_weekday,
            by_hour,
            by_category,
            by_grade,
            by_gender,
            handed_over,
            by_school,
            checkin,
            checkin_answers,
        ),
    )


def _urgent(f: Figures, labels: Labels) -> Section:
    summary = Table(
        "緊急性の高い相談",
        ("項目", "件数"),
        (
            ("緊急の目印がついた相談（キーワード・危険のサイン）", f.urgent_cases),
            ("うち受付時間外", f.urgent_out_of_hours),
            ("緊急対応", sum(f.emergencies_by_type.values())),
            ("緊急対応の終了", f.emergencies_closed),
            ("スーパーバイザー・担当課への知らせ", f.emergency_notifications),
            ("関係機関への連絡", sum(f.emergency_contacts.values())),
        ),
    )
    keywords = Table(
        "キーワード別（相談の件数）",
        ("キーワード", "件数"),
        _keyed_rows(f.urgent_by_keyword, [(k, k) for k in labels.keywords]),
        note="1つの相談に複数のキーワードがあるときは、それぞれに数えています。",
        chart=Chart("bar"),
    )
    risks = Table(
        "危険のサインの種類別（相談の件数）",
        ("種類", "件数"),
        _keyed_rows(f.urgent_by_risk, [(c, c) for c in RISK_CATEGORIES]),
        note="キーワードのほかに、危険のサインとなる言い方で緊急の目印がついた相談です。"
        "1つの相談に複数の種類があるときは、それぞれに数えています。",
        chart=Chart("bar"),
    )
    types = Table(
        "緊急対応の種類",
        ("種類", "件数"),
        _keyed_rows(f.emergencies_by_type, list(EMERGENCY_TYPES.items())),
        chart=Chart("bar"),
    )
    contacts = Table(
        "連絡した関係機関",
        ("関係機関", "件数"),
        _keyed_rows(f.emergency_contacts),
    )
    results = Table(
        "連絡の結果",
        ("結果", "件数"),
        _keyed_rows(f.emergency_results, list(CONTACT_RESULTS.items())),
    )
    flag = Table(
        "緊急の目印から最初の返信までの時間（分）",
        ("項目", "件数", "中央値", "90パーセンタイル"),
        (_duration_row("緊急の目印がついてから相談員が返信するまで", f.flag_to_reply),),
    )
    return Section(
        "緊急性の高い相談",
        "緊急性の高い相談",
        (summary, keywords, risks, types, contacts, results, flag),
    )


def _auto_and_broadcasts(f: Figures) -> Section:
    purposes = list(PURPOSES)
    purposes += sorted(
        k for k in set(f.replies_by_purpose) | set(f.reply_failures_by_purpose) if k not in PURPOSES
    )
    sent = Table(
        "送ったメッセージ（目的別）",
        ("目的", "送信", "失敗"),
        tuple(
            (
                _label(p, PURPOSES),
                f.replies_by_purpose.get(p, 0),
                f.reply_failures_by_purpose.get(p, 0),
            )
            for p in purposes
        ),
        chart=Chart("bar"),
    )
    auto = Table(
        "自動応答",
        ("項目", "件数"),
        (
            ("受付時間外", f.replies_by_purpose.get("out_of_hours", 0)),
            ("受付時間外（緊急の窓口の案内）", f.replies_by_purpose.get("urgent_out_of_hours", 0)),
            ("混雑時", f.replies_by_purpose.get("congestion", 0)),
            ("画像など（文字だけでお願い）", f.replies_by_purpose.get("media_refused", 0)),
            ("受け取らなかった画像・スタンプなど", f.media_refused),
        ),
    )
    methods = _line_budget(f)
    broadcasts = Table(
        "一斉送信",
        ("ID", "開始日", "対象", "届いた人数", "届かなかった人数", "状態"),
        tuple(
            (
                b.broadcast_id,
                b.started_day or "前月から継続",
                {"registered": "登録者全員", "target_group": "対象の学校の人"}.get(
                    b.audience or "", b.audience or "—"
                ),
                b.recipients,
                b.failures,
                "完了" if b.finished else "送信中",
            )
            for b in f.broadcasts
        ),
        note=f"重ねて送らないよう止めた一斉送信: {f.broadcasts_refused}件",
    )
    return Section("自動応答・一斉送信", "自動応答・一斉送信", (sent, auto, methods, broadcasts))


def _line_budget(f: Figures) -> Table:
    """The month's LINE messages against the plan: what counted, by kind, and what went free."""
    counselor_push = f.pushes_by_kind.get("counselor", 0)
    auto_push = f.pushes_by_kind.get("auto", 0)
    counselor_free = f.free_replies_by_kind.get("counselor", 0)
    auto_free = f.free_replies_by_kind.get("auto", 0)
    counted = counselor_push + auto_push + f.broadcast_recipients
    free = counselor_free + auto_free
    return Table(
        "今月のLINEの通数（プランに対して）",
        ("項目", "通数", "月の通数に数えるか"),
        (
            ("相談員の返信（プッシュ）", counselor_push, "数える"),
            ("自動応答（プッシュ）", auto_push, "数える"),
            ("一斉送信（受け取った人数）", f.broadcast_recipients, "数える"),
            ("通数に数える合計", counted, ""),
            ("今月のプランの通数", f.quota_limit, ""),
            ("プランのうち使った割合", _ratio(counted, f.quota_limit or 0), ""),
            ("LINEが数えた通数（この月の最後の読み取り）", f.quota_used, ""),
            ("相談員の返信（返信トークン・無料）", counselor_free, "数えない"),
            ("自動応答（返信トークン・無料）", auto_free, "数えない"),
            ("返信トークンで無料で送った割合", _ratio(free, free + counselor_push + auto_push), ""),
            (
                "相談員の返信のうち無料で送った割合",
                _ratio(counselor_free, counselor_free + counselor_push),
                "",
            ),
        ),
        note="返信トークン（相談者のメッセージから1分ほど使えます）で送った返信は、LINEの月の"
        "通数に数えられません。一斉送信は、今月送った分の受け取り人数です。プランの通数は、"
        "この月にLINEから最後に読み取った値です（読み取れなかったときは「—」）。",
    )


def _security(f: Figures, limits: Limits, checklist: tuple[CheckLine, ...]) -> Section:
    limit = limits.password_max_age_days
    signature = Table(
        "LINEからの通知の署名の確認（拒否した要求）",
        ("理由", "件数"),
        _keyed_rows(f.signature_rejected, list(SIGNATURE_REASONS.items())),
    )
    logins = Table(
        "コンソールへのログイン",
        ("項目", "回数"),
        (
            ("ログイン成功", f.logins),
            ("うち二要素認証を使った", f.logins_second_factor),
            ("ログイン失敗", sum(f.login_failures.values())),
            ("アカウントのロック", sum(f.lockouts.values())),
        ),
    )
    failures = Table(
        "ログイン失敗の理由",
        ("理由", "回数"),
        _keyed_rows(f.login_failures, names=LOGIN_FAILURES),
    )
    lockouts = Table(
        "ロックされたアカウント",
        ("職員", "回数"),
        _keyed_rows(f.lockouts, names={k: _who(f, k) for k in f.lockouts}),
    )
    second = sum(s.second_factor for s in f.staff)
    staff = Table(
        "職員のパスワードと二要素認証（月末）",
        ("職員", "役割", "パスワードを変えてからの日数", f"{limit}日超え", "二要素認証"),
        tuple(
            (
                _who(f, s.staff_id),
                _label(s.role or "", ROLES),
                s.password_age_days,
                "超えている" if s.password_age_days is None or s.password_age_days > limit else "",
                "あり" if s.second_factor else "なし",
            )
            for s in f.staff
        ),
        note=(
            f"二要素認証の設定率: {second}/{len(f.staff)}名"
            + (f"（{second / len(f.staff):.1%}）" if f.staff else "")
        ),
    )
    changes = Table(
        "職員アカウントの変更",
        ("日付", "職員", "内容", "変更前", "変更後", "行った人"),
        tuple(
            (
                c.day,
                _who(f, c.staff_id),
                STAFF_CHANGES[c.what],
                _label(c.before, ROLES) if c.before else "",
                _label(c.after, ROLES) if c.after else "",
                _who(f, c.by) if c.by else UNKNOWN,
            )
            for c in f.staff_changes
        ),
    )
    audit = Table(
        "相談記録の閲覧と操作（監査記録の集計）",
        ("職員", "閲覧の回数", "閲覧した相談", "返信", "終了"),
        tuple(
            (_who(f, a.staff_id), a.case_views, a.cases_viewed, a.replies, a.closes)
            for a in f.audit
        ),
    )
    settings = Table("設定の変更", ("設定", "回数"), _settings_rows(f.settings_changed))
    token = f.token
    if token.source is None:
        kind = "静的トークン（発行日不明）"
    elif token.source == ft.TOKEN_ISSUED:
        kind = "システムが発行・更新するトークン（v2.1）"
    else:
        kind = "手作業で更新したトークン"
    token_table = Table(
        "LINEのチャネルアクセストークン",
        ("項目", "値"),
        (
            ("トークン", kind),
            ("キーID", token.key_id or "—"),
            ("発行日", _day(token.issued_at) or "不明"),
            ("有効期限", _day(token.expires_at) or "—"),
            ("月末での経過日数", token.age_days),
            ("失効", "失効済み" if token.revoked else "なし"),
        ),
    )
    retention = Table(
        "保存期間を過ぎたメッセージの消去",
        ("項目", "値"),
        (("消去の実行", f.retention_runs), ("消したメッセージ", f.erased_messages)),
    )
    return Section(
        "情報セキュリティ",
        "情報セキュリティ",
        (
            _checklist_table(checklist),
            signature,
            logins,
            failures,
            lockouts,
            staff,
            changes,
            audit,
            settings,
            token_table,
            retention,
        ),
    )


def _system(f: Figures) -> Section:
    services = sorted(set(SERVICES) | set(f.service_starts) | set(f.service_stops))
    starts = Table(
        "サービスの起動と停止",
        ("サービス", "起動", "停止"),
        tuple(
            (_label(s, SERVICES), f.service_starts.get(s, 0), f.service_stops.get(s, 0))
            for s in services
        ),
    )
    bounded = sorted(
        (b, k)
        for k in f.webhook_latency_ms
        if (b := bucket_bound(k)) is not None and b != float("inf")
    )
    last = bounded[-1][0] if bounded else None
    latency = Table(
        "LINEからの通知（Webhook）への応答時間",
        ("項目", "値"),
        (
            ("受け付けた要求", f.webhook_requests),
            ("中央値", _ms_label(histogram_percentile(f.webhook_latency_ms, 50), last)),
            ("99パーセンタイル", _ms_label(histogram_percentile(f.webhook_latency_ms, 99), last)),
        ),
        note="1分ごとの集計（応答時間の区分ごとの件数）を合わせて求めた、区分の上限の値です。",
    )
    buckets = sorted(
        ((b, k) for k in f.webhook_latency_ms if (b := bucket_bound(k)) is not None),
    )
    distribution = Table(
        "Webhookの応答時間の分布",
        ("応答時間", "要求の数"),
        tuple((_ms_label(b, last), f.webhook_latency_ms[k]) for b, k in buckets),
        chart=Chart("column"),
    )
    statuses = Table(
        "Webhookの応答（HTTPステータス）",
        ("ステータス", "件数"),
        tuple((k, f.webhook_by_status[k]) for k in sorted(f.webhook_by_status)),
    )
    dead = Table(
        "処理できずに退避したメッセージ（デッドレター）",
        ("キュー", "件数"),
        _keyed_rows(f.dead_letters),
    )
    api = Table("LINE APIのエラー", ("API・ステータス", "件数"), _keyed_rows(f.api_errors))
    twice = Table(
        "障害のあとの送り直し",
        ("項目", "件数"),
        (("二重に届いたかもしれないメッセージ", f.sends_maybe_twice),),
        note=(
            "返信を試したあとに送信側が止まり、届いたかどうか分からないまま、"
            "生徒に届かないことがないようプッシュで送り直したものです。"
        ),
    )
    return Section(
        "システム稼働",
        "システム稼働",
        (starts, latency, distribution, statuses, dead, api, twice),
    )
