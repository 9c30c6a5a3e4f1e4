"""The report files: every figure of the report in the workbook and in the PDF, in Japanese."""

from __future__ import annotations

import re
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import openpyxl
import pypdf
import pytest
from soudan_reporting.build import BuiltReport, build_month, report_paths
from soudan_reporting.factgen import MonthGenerator, Plan, reference_figures, store_facts
from soudan_reporting.month import Month
from soudan_reporting.pdf import FontMissing
from soudan_reporting.recorder import EVENTS
from soudan_reporting.report import (
    PURPOSES,
    Change,
    DecimalChange,
    Percent,
    PointChange,
    Report,
    Table,
    as_text,
)
from soudan_reporting.settings import ReportingSettings
from soudan_shared.contracts import ReplyPurpose
from soudan_shared.store import Store, open_store

pytestmark = pytest.mark.integration
OCTOBER = Month(2026, 10)
SEPTEMBER = OCTOBER.previous()
SHEETS = [
    "概要",
    "登録状況",
    "相談件数",
    "緊急性の高い相談",
    "自動応答・一斉送信",
    "情報セキュリティ",
    "システム稼働",
]


@dataclass
class Built:
    built: BuiltReport
    plan: Plan
    store: Store


@pytest.fixture(scope="module")
async def october(
    mongodb_url: str, config_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Built]:
    """A generated October after a generated September (for 前月比), built once for the tests
    of this module."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    store = await open_store(mongodb_url, database=name)
    generator = MonthGenerator(OCTOBER, cases=80, seed=11, webhook_every_minutes=240)
    earlier = MonthGenerator(SEPTEMBER, cases=50, seed=12, webhook_every_minutes=720)
    facts = [f for f in earlier.facts() if f.at < OCTOBER.start] + list(generator.facts())
    await store_facts(store.db[EVENTS], facts)
    settings = ReportingSettings(
        rabbitmq_url="amqp://unused/",
        log_hash_key="k",
        mongodb_url="memory://",
        soudan_config_dir=config_dir,
        reports_dir=tmp_path_factory.mktemp("reports"),
    )
    built = await build_month(store.db, OCTOBER, settings)
    assert built.figures == reference_figures(facts, OCTOBER)
    assert built.previous == reference_figures(facts, SEPTEMBER)
    yield Built(built, generator.plan, store)
    await store.client.drop_database(name)
    await store.close()


# -- reading the files back -------------------------------------------------------------------


def _sheet_rows(path: Path, sheet: str) -> list[tuple[Any, ...]]:
    workbook = openpyxl.load_workbook(path)
    return [tuple(row) for row in workbook[sheet].iter_rows(values_only=True)]


def _expected_cell(value: Any) -> Any:
    return "—" if value is None else value


def _assert_table_in_sheet(rows: list[tuple[Any, ...]], table: Table, start: int) -> int:
    """``table`` appears in ``rows`` at or after ``start``: title, header, every cell. Returns
    the row after it."""
    titles = [i for i in range(start, len(rows)) if rows[i] and rows[i][0] == table.title]
    assert titles, f"table {table.title!r} not found in the sheet"
    i = titles[0]
    width = len(table.columns)
    assert rows[i + 1][:width] == table.columns
    for offset, expected in enumerate(table.rows):
        actual = rows[i + 2 + offset][:width]
        for value, want in zip(actual, expected, strict=True):
            if isinstance(want, float):
                assert value == pytest.approx(want), (table.title, expected)
            else:
                assert value == _expected_cell(want), (table.title, expected)
    return i + 2 + len(table.rows)


def _pdf_text(path: Path) -> str:
    reader = pypdf.PdfReader(path)
    return "".join(page.extract_text() for page in reader.pages)


def _squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _assert_report_in_pdf_text(text: str, report: Report) -> None:
    """Every section, table title, header and cell, in the order of the report."""
    flat = _squeeze(text)
    position = 0

    def expect(piece: str, where: str) -> None:
        nonlocal position
        found = flat.find(_squeeze(piece), position)
        assert found >= 0, f"{piece!r} ({where}) not found in the PDF after position {position}"
        position = found + len(_squeeze(piece))

    expect(report.title, "title")
    for section in report.sections:
        expect(section.title, "section")
        for table in section.tables:
            expect(table.title, "table title")
            for column in table.columns:
                expect(column, table.title)
            for row in table.rows:
                for cell in row:
                    expect(as_text(cell), table.title)


# -- the tests --------------------------------------------------------------------------------


async def test_the_files_are_named_by_month_in_the_reports_directory(october: Built) -> None:
    built = october.built
    assert (built.xlsx.name, built.pdf.name) == (
        "soudan-report-2026-10.xlsx",
        "soudan-report-2026-10.pdf",
    )
    assert report_paths(built.xlsx.parent, OCTOBER) == built.files
    assert not [p for p in built.xlsx.parent.iterdir() if p.name.startswith(".")]


async def test_every_figure_of_the_report_is_in_the_workbook(october: Built) -> None:
    report = october.built.report
    workbook = openpyxl.load_workbook(october.built.xlsx)
    assert workbook.sheetnames == SHEETS
    for section in report.sections:
        rows = [tuple(r) for r in workbook[section.sheet].iter_rows(values_only=True)]
        assert rows[0][0] == "SNSを活用した相談業務 実績報告書（2026年10月）"
        position = 0
        for table in section.tables:
            position = _assert_table_in_sheet(rows, table, position)


async def test_the_workbook_keeps_numbers_as_numbers_and_charts_as_excel_charts(
    october: Built,
) -> None:
    report = october.built.report
    workbook = openpyxl.load_workbook(october.built.xlsx)
    for section in report.sections:
        charts = sum(1 for t in section.tables if t.chart is not None and t.rows)
        assert len(workbook[section.sheet]._charts) == charts, section.sheet
    assert sum(len(ws._charts) for ws in workbook) >= 10
    with zipfile.ZipFile(october.built.xlsx) as archive:
        chart_parts = [n for n in archive.namelist() if n.startswith("xl/charts/chart")]
    assert len(chart_parts) == sum(len(ws._charts) for ws in workbook)

    rows = _sheet_rows(october.built.xlsx, "相談件数")
    counts = {r[0]: r[1] for r in rows if r and r[0] and r[1] is not None}
    assert counts["相談件数（始まった相談）"] == october.plan.cases_in_month
    rate = counts["応答率（受付時間内）"]
    figures = october.built.figures
    assert rate == pytest.approx(figures.answered_in_hours / figures.cases_in_hours)
    cell = next(
        c for c in openpyxl.load_workbook(october.built.xlsx)["相談件数"]["B"] if c.value == rate
    )
    assert cell.number_format == "0.0%"


async def test_every_figure_of_the_report_is_in_the_pdf_text_in_order(october: Built) -> None:
    text = _pdf_text(october.built.pdf)
    _assert_report_in_pdf_text(text, october.built.report)
    for label in ("登録状況", "相談件数", "応答率", "緊急性の高い相談", "情報セキュリティ"):
        assert label in text
    assert f"相談件数（始まった相談）{october.plan.cases_in_month}" in _squeeze(text)


def _table(report: Report, title: str) -> Table:
    return next(t for s in report.sections for t in s.tables if t.title == title)


async def test_the_summary_shows_each_figure_beside_the_previous_month_and_the_change(
    october: Built,
) -> None:
    now, before = october.built.figures, october.built.previous
    assert before is not None
    assert before.cases_opened > 0
    assert now.cases_opened != before.cases_opened  # a change to show
    change = now.cases_opened - before.cases_opened
    rows = _sheet_rows(october.built.xlsx, "概要")
    header = rows.index(("項目", "今月（2026年10月）", "前月（2026年9月）", "前月比（増減）"))
    summary = {row[0]: row[1:4] for row in rows[header + 1 :] if row[0]}
    assert summary["相談件数"] == (now.cases_opened, before.cases_opened, change)
    assert summary["終わった相談"] == (
        now.cases_closed,
        before.cases_closed,
        now.cases_closed - before.cases_closed,
    )
    rate_now = now.answered_in_hours / now.cases_in_hours
    rate_before = before.answered_in_hours / before.cases_in_hours
    points = summary["応答率（受付時間内）"][2]
    assert points == pytest.approx(round((rate_now - rate_before) * 100, 1))
    sheet = openpyxl.load_workbook(october.built.xlsx)["概要"]
    formats = {
        row[0].value: (row[1].number_format, row[3].number_format)
        for row in sheet.iter_rows(min_row=header + 2)
        if row[0].value
    }
    assert formats["相談件数"] == ("#,##0", "+#,##0;-#,##0;±0")
    assert formats["応答率（受付時間内）"][1] == '+0.0"ポイント";-0.0"ポイント";±0.0"ポイント"'

    flat = _squeeze(_pdf_text(october.built.pdf))
    assert "前月（2026年9月）前月比（増減）" in flat
    assert f"相談件数{now.cases_opened:,}{before.cases_opened:,}{change:+,}" in flat
    assert f"{points:+.1f}ポイント" in flat


async def test_the_cases_by_grade_gender_category_and_hand_over_are_in_both_files(
    october: Built,
) -> None:
    figures, report = october.built.figures, october.built.report
    closed = figures.cases_closed
    assert sum(figures.closed_by_category.values()) > closed  # some cases have two categories
    assert 0 < figures.closed_by_grade[""] < closed
    assert 0 < figures.closed_by_gender[""] < closed
    assert 0 < figures.cases_handed_over < closed
    grades = _table(report, "学年別（今月終わった相談）")
    genders = _table(report, "性別別（今月終わった相談）")
    categories = _table(report, "分類別（今月終わった相談）")
    handed_over = _table(report, "他の窓口につないだ件数（今月終わった相談）")
    assert [row[0] for row in grades.rows] == [
        *("中1", "中2", "中3", "高1", "高2", "高3", "その他"),
        "不明",
    ]
    assert grades.rows[-1] == ("不明", figures.closed_by_grade[""])
    assert sum(int(row[1] or 0) for row in grades.rows) == closed
    assert genders.rows == (
        ("男性", figures.closed_by_gender.get("male", 0)),
        ("女性", figures.closed_by_gender.get("female", 0)),
        ("その他・答えない", figures.closed_by_gender.get("other", 0)),
        ("不明", figures.closed_by_gender[""]),
    )
    assert ("家庭", figures.closed_by_category["family"]) in categories.rows
    assert handed_over.rows[1] == ("うち他の窓口につないだ相談", figures.cases_handed_over)

    rows = _sheet_rows(october.built.xlsx, "相談件数")
    position = 0
    for table in (categories, grades, genders, handed_over):
        position = _assert_table_in_sheet(rows, table, position)
    cells = [cell for row in rows for cell in row if isinstance(cell, str)]
    assert categories.note in cells
    assert grades.note in cells

    flat = _squeeze(_pdf_text(october.built.pdf))
    for table in (categories, grades, genders, handed_over):
        at = flat.find(_squeeze(table.title))
        assert at >= 0, table.title
        cells_text = "".join(_squeeze(as_text(c)) for row in table.rows for c in row)
        assert flat.find(cells_text, at) >= 0, table.title
    assert "1つの相談に複数の分類があるときは、それぞれに数えています" in flat
    assert f"不明{figures.closed_by_grade['']}" in flat


async def test_the_pdf_is_a4_with_its_japanese_font_embedded(october: Built) -> None:
    reader = pypdf.PdfReader(october.built.pdf)
    assert len(reader.pages) > 5
    fonts: dict[str, Any] = {}
    for page in reader.pages:
        box = page.mediabox
        assert (round(float(box.width)), round(float(box.height))) == (595, 842)
        resources: Any = page["/Resources"]
        for reference in resources["/Font"].values():
            font = reference.get_object()
            fonts[font["/BaseFont"]] = font
    assert fonts
    for name, font in fonts.items():
        descriptor = font["/FontDescriptor"].get_object()
        assert "/FontFile2" in descriptor, f"{name} is not embedded"
        assert "IPAexGothic" in name
    assert reader.metadata is not None
    assert reader.metadata.title == "SNSを活用した相談業務 実績報告書（2026年10月）"


async def test_the_checklist_of_rule_7_shows_a_status_and_evidence_for_each_line(
    october: Built,
) -> None:
    rows = _sheet_rows(october.built.xlsx, "情報セキュリティ")
    columns = ("番号", "根拠", "確認すること", "状況", "確認の根拠となる記録")
    header = next(i for i, row in enumerate(rows) if row[:5] == columns)
    lines = []
    for row in rows[header + 1 :]:
        if not isinstance(row[0], int):
            break
        lines.append(row)
    assert len(lines) == len(october.built.report.checklist) == 8
    assert {line[3] for line in lines} <= {"適合", "要確認"}
    assert all(line[4] for line in lines)
    by_requirement = {line[2]: line for line in lines}
    passwords = by_requirement["職員のパスワードを定期的に（90日以内に）変えている"]
    assert passwords[3] == "要確認"
    assert "相談 太郎（s03）: 120日" in passwords[4]
    assert "相談 三郎（s05）: 95日" in passwords[4]
    second_factor = by_requirement["ログインに二要素認証を使っている"]
    assert second_factor[3] == "要確認"
    assert "s07" in second_factor[4]  # named by id: created without a display name
    token = by_requirement["LINEのチャネルアクセストークンを定期的に（90日以内に）更新している"]
    assert token[3] == "適合"
    assert "40日" in token[4]


async def test_an_empty_month_gives_valid_files_of_zeros(
    store: Store, make_settings: Callable[..., ReportingSettings]
) -> None:
    built = await build_month(store.db, Month(2026, 2), make_settings())

    rows = _sheet_rows(built.xlsx, "概要")
    figures = {r[0]: r[1] for r in rows if r and r[0] and len(r) > 1 and r[1] is not None}
    assert figures["相談件数"] == 0
    assert figures["月末の登録者数"] == 0
    assert figures["応答率（受付時間内）"] == "—"
    # nothing recorded the month before: no previous value and no change, not 0 and ±0
    header = next(i for i, r in enumerate(rows) if r[:2] == ("項目", "今月（2026年2月）"))
    assert rows[header][2:4] == ("前月（2026年1月）", "前月比（増減）")
    summary = built.report.sections[0].tables[0]
    key_figures = rows[header + 1 : header + 1 + len(summary.rows)]
    assert [r[0] for r in key_figures] == [r[0] for r in summary.rows]
    assert {r[2:4] for r in key_figures} == {("—", "—")}
    assert "前月の記録がないため、前月と前月比は「—」です" in summary.note
    assert rows[header + 1 + len(summary.rows)][0] == summary.note
    days = [r for r in _sheet_rows(built.xlsx, "相談件数") if r[0] and str(r[0]).startswith("2/")]
    assert len(days) == 28
    assert all(r[1] == 0 for r in days)
    text = _pdf_text(built.pdf)
    _assert_report_in_pdf_text(text, built.report)
    assert "静的トークン（発行日不明）" in text


async def test_a_missing_font_stops_the_build_with_a_line_that_says_what_to_install(
    store: Store, make_settings: Callable[..., ReportingSettings], tmp_path: Path
) -> None:
    settings = make_settings(report_font_path=tmp_path / "nope.ttf")
    with pytest.raises(FontMissing, match="fonts-ipaexfont"):
        await build_month(store.db, OCTOBER, settings)
    assert not list(settings.reports_dir.glob("*")) if settings.reports_dir.exists() else True


async def test_building_a_month_twice_gives_the_same_figures_in_the_same_files(
    october: Built, make_settings: Callable[..., ReportingSettings]
) -> None:
    again = await build_month(october.store.db, OCTOBER, make_settings())
    assert again.figures == october.built.figures
    assert again.report.sections == october.built.report.sections
    for sheet in SHEETS:
        first = _sheet_rows(october.built.xlsx, sheet)[3:]  # below the build time
        second = _sheet_rows(again.xlsx, sheet)[3:]
        assert first == second, sheet
    assert (
        _squeeze(_pdf_text(again.pdf)).split("概要", 1)[1]
        == _squeeze(_pdf_text(october.built.pdf)).split("概要", 1)[1]
    )


def test_percent_cells_read_as_percentages() -> None:
    assert as_text(Percent(0.8734)) == "87.3%"
    assert as_text(1234) == "1,234"
    assert as_text(12.25) == "12.2"
    assert as_text(None) == "—"
    assert [as_text(Change(n)) for n in (12, 0, -1234)] == ["+12", "±0", "-1,234"]
    assert as_text(DecimalChange(-1.5)) == "-1.5"
    assert as_text(PointChange(2.3)) == "+2.3ポイント"


def test_every_kind_of_reply_has_a_japanese_name_in_the_report() -> None:
    # A purpose without a name would reach the board as its English identifier.
    assert set(get_args(ReplyPurpose)) == set(PURPOSES)
