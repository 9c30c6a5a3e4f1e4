"""The report as a PDF: A4, a Japanese TrueType font embedded, the same tables and charts.

reportlab embeds the subset of the font it uses (with its Unicode map, so the text can be
searched and copied). The font file is a setting (``REPORT_FONT_PATH``); without it there is no
readable Japanese PDF, so :class:`FontMissing` stops the build with a message that says what to
install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from reportlab.graphics.charts.barcharts import HorizontalBarChart, VerticalBarChart
from reportlab.graphics.charts.piecharts import Pie
from reportlab.graphics.shapes import Drawing, Rect, String
from reportlab.lib import colors
from reportlab.lib.enums import TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import (
    CondPageBreak,
    KeepTogether,
    PageBreak,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    TableStyle,
)
from reportlab.platypus import Table as PdfTable

from soudan_reporting.report import CHECK, Cell, Percent, Report, Table, as_text

FONT = "SoudanJapanese"
MARGIN = 15 * mm
CELL_PADDING = 16  # reportlab's 6 + 6 points each side, and some air
WIDTH = A4[0] - 2 * MARGIN
HEADER_BG = colors.HexColor("#DDEBF7")
BAR = colors.HexColor("#4472C4")
PIE = [
    colors.HexColor(c)
    for c in ("#4472C4", "#ED7D31", "#A5A5A5", "#FFC000", "#5B9BD5", "#70AD47", "#264478")
]


class FontMissing(RuntimeError):
    """The Japanese font for the PDF cannot be used."""


def register_font(path: Path) -> None:
    if not path.is_file():
        raise FontMissing(
            f"REPORT_FONT_PATH={path}: no such font file; install Debian's fonts-ipaexfont "
            "(apt-get install fonts-ipaexfont) or point REPORT_FONT_PATH at a Japanese "
            "TrueType font"
        )
    try:
        pdfmetrics.registerFont(TTFont(FONT, str(path)))
    except Exception as exc:  # reportlab raises its own TTFError and plain errors alike
        raise FontMissing(f"REPORT_FONT_PATH={path}: not a usable TrueType font ({exc})") from exc


def _styles() -> dict[str, ParagraphStyle]:
    base = ParagraphStyle("base", fontName=FONT, fontSize=9, leading=12, wordWrap="CJK")
    return {
        "title": ParagraphStyle("title", base, fontSize=16, leading=22, spaceAfter=4),
        "subtitle": ParagraphStyle("subtitle", base, textColor=colors.HexColor("#555555")),
        "section": ParagraphStyle("section", base, fontSize=14, leading=20, spaceAfter=6),
        "table": ParagraphStyle("table", base, fontSize=11, leading=15, spaceBefore=8),
        "cell": base,
        "number": ParagraphStyle("number", base, alignment=TA_RIGHT),
        "header": ParagraphStyle("header", base, fontSize=8.5, leading=11),
        "note": ParagraphStyle("note", base, fontSize=8, textColor=colors.HexColor("#555555")),
        "check": ParagraphStyle("check", base, textColor=colors.HexColor("#C00000")),
    }


def write_pdf(report: Report, path: Path, font_path: Path) -> None:
    register_font(font_path)
    styles = _styles()
    doc = SimpleDocTemplate(
        str(path),
        pagesize=A4,
        leftMargin=MARGIN,
        rightMargin=MARGIN,
        topMargin=MARGIN,
        bottomMargin=MARGIN + 5 * mm,
        title=report.title,
        subject=f"実績報告書 {report.month}",
        author="Soudan",
        creator="Soudan reporting",
        initialFontName=FONT,
    )
    story: list[Any] = [
        Paragraph(escape(report.title), styles["title"]),
        Paragraph(f"作成: {escape(report.built_label)}", styles["subtitle"]),
        Spacer(1, 6 * mm),
    ]
    for i, section in enumerate(report.sections):
        if i:
            story.append(PageBreak())
        story.append(Paragraph(escape(section.title), styles["section"]))
        for table in section.tables:
            story.extend(_table(table, styles))

    def footer(canvas: Any, document: Any) -> None:
        canvas.saveState()
        canvas.setFont(FONT, 8)
        canvas.setFillColor(colors.HexColor("#555555"))
        canvas.drawString(MARGIN, MARGIN - 2 * mm, report.title)
        canvas.drawRightString(A4[0] - MARGIN, MARGIN - 2 * mm, f"{document.page}ページ")
        canvas.restoreState()

    doc.build(story, onFirstPage=footer, onLaterPages=footer)


def _table(table: Table, styles: dict[str, ParagraphStyle]) -> list[Any]:
    header = [Paragraph(escape(c), styles["header"]) for c in table.columns]
    body = [[_cell(v, styles) for v in row] for row in table.rows]
    if not body:
        body = [[Paragraph("（記録なし）", styles["note"])] + [""] * (len(table.columns) - 1)]
    grid = PdfTable([header, *body], colWidths=_widths(table), repeatRows=1, hAlign="LEFT")
    commands: list[tuple[Any, ...]] = [
        ("FONTNAME", (0, 0), (-1, -1), FONT),
        ("GRID", (0, 0), (-1, -1), 0.4, colors.HexColor("#999999")),
        ("BACKGROUND", (0, 0), (-1, 0), HEADER_BG),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("TOPPADDING", (0, 0), (-1, -1), 2),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
    ]
    if not table.rows:
        commands.append(("SPAN", (0, 1), (-1, 1)))
    grid.setStyle(TableStyle(commands))
    title = Paragraph(escape(table.title), styles["table"])
    flow: list[Any] = [
        CondPageBreak(40 * mm),
        KeepTogether([title, grid]) if len(body) < 12 else title,
    ]
    if len(body) >= 12:
        flow.append(grid)
    if table.note:
        flow.append(Paragraph(escape(table.note), styles["note"]))
    if table.chart is not None and table.rows:
        flow.append(Spacer(1, 3 * mm))
        flow.append(_chart(table))
    return flow


def _cell(value: Cell, styles: dict[str, ParagraphStyle]) -> Paragraph:
    text = escape(as_text(value))
    if value == CHECK:
        return Paragraph(text, styles["check"])
    numeric = isinstance(value, int | float | Percent) or value is None
    return Paragraph(text, styles["number" if numeric else "cell"])


def _widths(table: Table) -> list[float]:
    """Each column as wide as its longest text; when they do not fit the page, the narrow ones
    keep their width and the wide ones share what is left (and wrap)."""
    natural = []
    for col, name in enumerate(table.columns):
        cells = [name] + [as_text(row[col]) for row in table.rows if col < len(row)]
        natural.append(max(_text_width(text) for text in cells) + CELL_PADDING)
    widths = [0.0] * len(natural)
    remaining = WIDTH
    order = sorted(range(len(natural)), key=lambda i: natural[i])
    for position, col in enumerate(order):
        share = remaining / (len(order) - position)
        widths[col] = min(natural[col], share)
        remaining -= widths[col]
    return widths


def _text_width(text: str) -> float:
    width: float = pdfmetrics.stringWidth(text, FONT, 9)
    return width


def _drawing(height: float) -> Drawing:
    drawing = Drawing(WIDTH, height)
    # Otherwise the renderer starts each drawing in Helvetica, a font the PDF would not embed.
    drawing.initialFontName = FONT
    return drawing


def _chart(table: Table) -> Drawing:
    col = table.chart.value_column if table.chart else 1
    names = [as_text(row[0]) for row in table.rows]
    values = [v if isinstance(v, int | float) else 0 for v in (row[col] for row in table.rows)]
    kind = table.chart.kind if table.chart else "column"
    if kind == "pie":
        return _pie(table.title, names, values)
    if kind == "bar":
        height = max(90.0, 16.0 * len(values) + 40)
        drawing = _drawing(height)
        chart: Any = HorizontalBarChart()
        chart.x, chart.y = 150, 20
        chart.width, chart.height = WIDTH - 190, height - 40
        chart.data = [list(reversed(values))]
        chart.categoryAxis.categoryNames = list(reversed(names))
        chart.categoryAxis.labels.fontName = FONT
        chart.categoryAxis.labels.fontSize = 7
        chart.categoryAxis.labels.boxAnchor = "e"
        chart.valueAxis.labels.fontName = FONT
        chart.valueAxis.labels.fontSize = 7
    else:
        height = 150.0
        drawing = _drawing(height)
        chart = VerticalBarChart()
        chart.x, chart.y = 35, 35
        chart.width, chart.height = WIDTH - 50, height - 55
        chart.data = [values]
        chart.categoryAxis.categoryNames = names
        chart.categoryAxis.labels.fontName = FONT
        chart.categoryAxis.labels.fontSize = 6 if len(names) > 12 else 8
        if len(names) > 12:
            chart.categoryAxis.labels.angle = 60
            chart.categoryAxis.labels.boxAnchor = "ne"
        chart.valueAxis.labels.fontName = FONT
        chart.valueAxis.labels.fontSize = 7
    chart.valueAxis.valueMin = 0
    if max(values, default=0) == 0:
        chart.valueAxis.valueMax = 1
    chart.bars[0].fillColor = BAR
    chart.bars.strokeColor = None
    drawing.add(chart)
    drawing.add(String(0, height - 10, table.title, fontName=FONT, fontSize=8))
    return drawing


def _pie(title: str, names: list[str], values: list[float]) -> Drawing:
    drawing = _drawing(170)
    drawing.add(String(0, 160, title, fontName=FONT, fontSize=8))
    shown = [(n, v) for n, v in zip(names, values, strict=True) if v > 0]
    if not shown:
        drawing.add(String(20, 80, "（記録なし）", fontName=FONT, fontSize=9))
        return drawing
    pie = Pie()
    pie.x, pie.y, pie.width, pie.height = 20, 10, 140, 140
    pie.data = [v for _, v in shown]
    pie.labels = None
    pie.slices.strokeColor = colors.white
    for i in range(len(shown)):
        pie.slices[i].fillColor = PIE[i % len(PIE)]
    drawing.add(pie)
    total = sum(v for _, v in shown)
    for i, (name, value) in enumerate(shown):
        y = 140 - i * 14
        drawing.add(_swatch(190, y, PIE[i % len(PIE)]))
        drawing.add(
            String(
                204,
                y,
                f"{name}  {as_text(int(value))}（{value / total:.0%}）",
                fontName=FONT,
                fontSize=8,
            )
        )
    return drawing


def _swatch(x: float, y: float, color: Any) -> Rect:
    return Rect(x, y - 1, 9, 9, fillColor=color, strokeColor=None)
