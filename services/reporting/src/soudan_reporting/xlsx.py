"""The report as an Excel workbook: a summary sheet and one sheet per section, native charts.

Each sheet lists its tables top to bottom (title, header, rows, note); a table with a chart has
it to its right, drawn by Excel from the table's own cells.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any

import xlsxwriter

from soudan_reporting.report import (
    Cell,
    Change,
    DecimalChange,
    Percent,
    PointChange,
    Report,
    Section,
    Table,
    as_text,
)

CHART_ROWS = 16  # rows a chart covers; a table with a chart takes at least this many
MAX_WIDTH = 70


def display_width(value: Cell) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in as_text(value))


def write_xlsx(report: Report, path: Path) -> None:
    workbook = xlsxwriter.Workbook(str(path))
    try:
        workbook.set_properties(
            {
                "title": report.title,
                "subject": f"実績報告書 {report.month}",
                "author": "Soudan",
                "created": report.built_at.replace(tzinfo=None),
            }
        )
        styles = _Styles(workbook)
        for section in report.sections:
            _write_section(workbook, styles, report, section)
    finally:
        workbook.close()


class _Styles:
    def __init__(self, workbook: Any) -> None:
        font = {"font_name": "Yu Gothic", "font_size": 10}
        self.title = workbook.add_format({**font, "bold": True, "font_size": 14})
        self.subtitle = workbook.add_format({**font, "font_size": 10, "font_color": "#555555"})
        self.table_title = workbook.add_format({**font, "bold": True, "font_size": 11})
        self.header = workbook.add_format(
            {**font, "bold": True, "bg_color": "#DDEBF7", "border": 1, "text_wrap": True}
        )
        self.text = workbook.add_format({**font, "border": 1, "text_wrap": True, "valign": "top"})
        self.integer = workbook.add_format({**font, "border": 1, "num_format": "#,##0"})
        self.percent = workbook.add_format({**font, "border": 1, "num_format": "0.0%"})
        self.decimal = workbook.add_format({**font, "border": 1, "num_format": "#,##0.0"})
        self.empty = workbook.add_format({**font, "border": 1, "align": "center"})
        # 前月比, signed as the PDF shows it (the cell keeps the number)
        self.change = workbook.add_format({**font, "border": 1, "num_format": "+#,##0;-#,##0;±0"})
        self.decimal_change = workbook.add_format(
            {**font, "border": 1, "num_format": "+#,##0.0;-#,##0.0;±0.0"}
        )
        self.point_change = workbook.add_format(
            {**font, "border": 1, "num_format": '+0.0"ポイント";-0.0"ポイント";±0.0"ポイント"'}
        )
        self.note = workbook.add_format({**font, "italic": True, "font_color": "#555555"})
        self.check = workbook.add_format(
            {**font, "border": 1, "bold": True, "font_color": "#C00000"}
        )

    def cell(self, value: Cell) -> Any:
        if value is None:
            return self.empty
        if isinstance(value, Change):
            return self.change
        if isinstance(value, DecimalChange):
            return self.decimal_change
        if isinstance(value, PointChange):
            return self.point_change
        if isinstance(value, Percent):
            return self.percent
        if isinstance(value, int):
            return self.integer
        if isinstance(value, float):
            return self.decimal
        if value == "要確認":
            return self.check
        return self.text


def _write_section(workbook: Any, styles: _Styles, report: Report, section: Section) -> None:
    sheet = workbook.add_worksheet(section.sheet)
    sheet.write_string(0, 0, report.title, styles.title)
    sheet.write_string(1, 0, f"{section.title}（{report.month.label}）", styles.subtitle)
    sheet.write_string(2, 0, f"作成: {report.built_label}", styles.subtitle)
    widths: dict[int, int] = {}
    row = 4
    for table in section.tables:
        row = _write_table(workbook, sheet, styles, section, table, row, widths) + 1
    for col, width in widths.items():
        sheet.set_column(col, col, min(MAX_WIDTH, max(8, width + 2)))
    sheet.freeze_panes(4, 0)


def _write_table(
    workbook: Any,
    sheet: Any,
    styles: _Styles,
    section: Section,
    table: Table,
    row: int,
    widths: dict[int, int],
) -> int:
    """Write ``table`` from ``row``; return the first row after it."""
    top = row
    sheet.write_string(row, 0, table.title, styles.table_title)
    row += 1
    for col, name in enumerate(table.columns):
        sheet.write_string(row, col, name, styles.header)
        widths[col] = max(widths.get(col, 0), display_width(name))
    row += 1
    first = row
    for values in table.rows:
        for col, value in enumerate(values):
            style = styles.cell(value)
            if value is None:
                sheet.write_string(row, col, "—", style)
            elif isinstance(value, str):
                sheet.write_string(row, col, value, style)
            else:
                sheet.write_number(row, col, value, style)
            widths[col] = max(widths.get(col, 0), display_width(value))
        row += 1
    last = row - 1
    if table.note:
        sheet.write_string(row, 0, table.note, styles.note)
        row += 1
    if table.chart is not None and table.rows:
        chart = workbook.add_chart({"type": table.chart.kind})
        value_col = table.chart.value_column
        chart.add_series(
            {
                "name": table.columns[value_col],
                "categories": [section.sheet, first, 0, last, 0],
                "values": [section.sheet, first, value_col, last, value_col],
                "data_labels": {"value": table.chart.kind == "pie"},
            }
        )
        chart.set_title({"name": table.title, "name_font": {"size": 11}})
        if table.chart.kind != "pie":
            chart.set_legend({"none": True})
        chart.set_size({"width": 560, "height": CHART_ROWS * 20})
        sheet.insert_chart(top, len(table.columns) + 1, chart)
        row = max(row, top + CHART_ROWS + 1)
    return row
