"""Building one month's report files from ``events``: figures → tables → XLSX and PDF.

The files are ``soudan-report-YYYY-MM.xlsx`` and ``soudan-report-YYYY-MM.pdf`` in the reports
directory (``REPORTS_DIR``), a predictable name the console's section page can list and serve.
Each is written to a temporary name and renamed into place, so a reader never sees half a file
and a rebuild replaces the old one whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from soudan_shared.config import load_config
from soudan_shared.contracts import utcnow

from soudan_reporting.aggregate import compute_figures, has_facts
from soudan_reporting.figures import Figures
from soudan_reporting.month import Month
from soudan_reporting.pdf import register_font, write_pdf
from soudan_reporting.recorder import EVENTS
from soudan_reporting.report import Labels, Limits, Report, build_report
from soudan_reporting.settings import ReportingSettings
from soudan_reporting.xlsx import write_xlsx

log = structlog.get_logger(__name__)

FILE_PREFIX = "soudan-report-"


def report_paths(directory: Path, month: Month) -> tuple[Path, Path]:
    """The XLSX and PDF of ``month`` in ``directory``."""
    stem = f"{FILE_PREFIX}{month}"
    return directory / f"{stem}.xlsx", directory / f"{stem}.pdf"


@dataclass(frozen=True)
class BuiltReport:
    month: Month
    figures: Figures
    report: Report
    xlsx: Path
    pdf: Path
    previous: Figures | None = None  # the month before, for 前月比 (None: nothing recorded)

    @property
    def files(self) -> tuple[Path, Path]:
        return self.xlsx, self.pdf


def labels_and_limits(settings: ReportingSettings) -> tuple[Labels, Limits]:
    config = load_config(settings.soudan_config_dir)
    limits = Limits(
        password_max_age_days=settings.report_password_max_age_days,
        token_max_age_days=settings.report_token_max_age_days,
    )
    return Labels.from_config(config), limits


async def build_month(
    db: Any,
    month: Month,
    settings: ReportingSettings,
    *,
    out_dir: Path | None = None,
    now: datetime | None = None,
) -> BuiltReport:
    """Compute ``month`` from ``db[events]`` and write both files; return what was built."""
    register_font(settings.report_font_path)  # fail before the work, not after it
    labels, limits = labels_and_limits(settings)
    directory = out_dir or settings.reports_dir
    directory.mkdir(parents=True, exist_ok=True)
    figures = await compute_figures(db[EVENTS], month)
    # 前月比: the previous month computed the same way, unless nothing was recorded in it
    earlier = month.previous()
    previous = (
        await compute_figures(db[EVENTS], earlier) if await has_facts(db[EVENTS], earlier) else None
    )
    report = build_report(
        figures, labels=labels, limits=limits, built_at=now or utcnow(), previous=previous
    )
    xlsx, pdf = report_paths(directory, month)
    # The writers are CPU-bound and synchronous: off the event loop, so the recorder keeps up.
    await asyncio.to_thread(_write_atomically, xlsx, lambda p: write_xlsx(report, p))
    await asyncio.to_thread(
        _write_atomically, pdf, lambda p: write_pdf(report, p, settings.report_font_path)
    )
    log.info("report_built", month=str(month), files=[xlsx.name, pdf.name])
    return BuiltReport(month, figures, report, xlsx, pdf, previous)


def _write_atomically(path: Path, write: Any) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
