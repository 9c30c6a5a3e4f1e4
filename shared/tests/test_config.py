"""The configuration loader: the shipped defaults load, and bad files fail with one clear line."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import date, time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from soudan_shared.config import (
    OFFICIAL_KEYWORDS,
    ConfigError,
    SoudanConfig,
    load_config,
)

pytestmark = pytest.mark.unit

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "config"


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A private copy of the shipped configuration, free to edit."""
    target = tmp_path / "config"
    shutil.copytree(SHIPPED, target)
    return target


def edit(config_dir: Path, name: str, change: Callable[[str], str]) -> None:
    path = config_dir / name
    original = path.read_text(encoding="utf-8")
    changed = change(original)
    assert changed != original, f"the edit did not change {name}"
    path.write_text(changed, encoding="utf-8")


def load_error(config_dir: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(config_dir)
    assert "\n" not in str(info.value)
    return info.value


def test_shipped_defaults_load_and_contain_the_official_keywords() -> None:
    config = load_config(SHIPPED)

    assert isinstance(config, SoudanConfig)
    assert config.keywords.official == OFFICIAL_KEYWORDS
    assert set(OFFICIAL_KEYWORDS) <= set(config.keywords.active)
    assert config.hours.timezone == ZoneInfo("Asia/Tokyo")
    assert config.hours.weekly.sessions_on(0)[0].last_acceptance == time(20, 30)
    assert "{next_open}" in config.messages.auto_reply.out_of_hours
    assert "{period}" in config.messages.broadcast.period_notice
    assert [c.label for c in config.messages.school_type.choices] == [
        "公立中学校・義務教育学校後期",
        "公立高校・中等教育・特別支援",
        "私立",
        "札幌市立",
        "その他",
    ]
    assert "0120-0-78310" in config.messages.auto_reply.out_of_hours_urgent
    assert "その他" in [c.label for c in config.categories.categories]


def test_the_official_keywords_are_the_fourteen_of_the_operating_rules() -> None:
    rule_5_4 = "死ぬ 死に 自殺 殺せ 死ね 殺し 消えたい リスカ 虐待 いじめ 暴力 暴行 自傷 助け"

    assert " ".join(OFFICIAL_KEYWORDS) == rule_5_4


def test_a_missing_file_is_named_in_the_error(config_dir: Path) -> None:
    (config_dir / "congestion.yaml").unlink()

    error = load_error(config_dir)

    assert error.file == "congestion.yaml"
    assert "not found" in str(error)


def test_a_missing_directory_is_named_in_the_error(tmp_path: Path) -> None:
    error = load_error(tmp_path / "nowhere")

    assert "nowhere" in str(error)


def test_broken_yaml_names_the_file_and_the_line(config_dir: Path) -> None:
    edit(config_dir, "categories.yaml", lambda t: t.replace("categories:", "categories: [", 1))

    error = load_error(config_dir)

    assert str(error).startswith("categories.yaml: invalid YAML at line ")


def test_an_invalid_time_names_the_file_and_the_field(config_dir: Path) -> None:
    edit(config_dir, "hours.yaml", lambda t: t.replace('open: "17:00"', 'open: "25:00"', 1))

    error = load_error(config_dir)

    assert error.file == "hours.yaml"
    assert "weekly.monday[0].open" in str(error)
    assert "25:00" in str(error)


def test_an_unquoted_time_is_read_as_a_time_not_a_number(config_dir: Path) -> None:
    edit(config_dir, "hours.yaml", lambda t: t.replace('close: "21:00"', "close: 21:00", 1))

    assert load_config(config_dir).hours.weekly.monday[0].close == time(21, 0)


def test_last_acceptance_after_closing_is_rejected(config_dir: Path) -> None:
    edit(
        config_dir,
        "hours.yaml",
        lambda t: t.replace('last_acceptance: "20:30"', 'last_acceptance: "21:30"', 1),
    )

    assert "weekly.monday[0]" in str(load_error(config_dir))


def test_a_period_ending_before_it_starts_is_rejected(config_dir: Path) -> None:
    edit(config_dir, "hours.yaml", lambda t: t.replace("end: 2027-03-31", "end: 2026-03-31"))

    assert "hours.yaml: periods[0]" in str(load_error(config_dir))


def test_an_unknown_weekday_is_rejected(config_dir: Path) -> None:
    edit(config_dir, "hours.yaml", lambda t: t.replace("  sunday:", "  sundy:"))

    assert "hours.yaml: weekly.sundy: unknown key" in str(load_error(config_dir))


def test_a_key_written_twice_is_rejected(config_dir: Path) -> None:
    edit(config_dir, "hours.yaml", lambda t: t.replace("  sunday:", "  monday:"))

    assert "duplicate key 'monday'" in str(load_error(config_dir))


def test_an_invalid_time_zone_is_rejected(config_dir: Path) -> None:
    edit(config_dir, "hours.yaml", lambda t: t.replace("Asia/Tokyo", "Asia/Tokio"))

    assert "hours.yaml: timezone" in str(load_error(config_dir))


def test_a_closed_date_may_be_a_single_day(config_dir: Path) -> None:
    edit(config_dir, "hours.yaml", lambda t: t.replace("  # - 2026-08-14", "  - 2026-08-14"))

    closed = load_config(config_dir).hours.closed_dates

    assert (closed[-1].start, closed[-1].end) == (date(2026, 8, 14), date(2026, 8, 14))


def test_official_keywords_cannot_be_removed(config_dir: Path) -> None:
    (config_dir / "keywords.yaml").write_text("official:\n  - 死ぬ\nextra: []\n", encoding="utf-8")

    keywords = load_config(config_dir).keywords

    assert keywords.official == OFFICIAL_KEYWORDS
    assert set(OFFICIAL_KEYWORDS) <= set(keywords.active)


def test_extra_keywords_are_added_after_the_official_ones(config_dir: Path) -> None:
    (config_dir / "keywords.yaml").write_text(
        "extra:\n  - オーバードーズ\n  - 死ね\n  - オーバードーズ\n", encoding="utf-8"
    )

    keywords = load_config(config_dir).keywords

    assert keywords.extra == ("オーバードーズ",)
    assert keywords.active == (*OFFICIAL_KEYWORDS, "オーバードーズ")


def test_a_word_listed_as_official_that_is_not_official_is_rejected(config_dir: Path) -> None:
    edit(config_dir, "keywords.yaml", lambda t: t.replace("  - 助け\n", "  - 助け\n  - つらい\n"))

    error = load_error(config_dir)

    assert error.file == "keywords.yaml"
    assert "つらい" in str(error)


def test_the_out_of_hours_reply_must_keep_its_placeholder(config_dir: Path) -> None:
    edit(
        config_dir, "messages.yaml", lambda t: t.replace("{next_open} からです。そのとき", "あとで")
    )

    assert "messages.yaml: auto_reply.out_of_hours: missing placeholder {next_open}" in str(
        load_error(config_dir)
    )


def test_an_unknown_placeholder_is_rejected(config_dir: Path) -> None:
    edit(config_dir, "messages.yaml", lambda t: t.replace("{period}", "{period}{name}"))

    assert "unknown placeholder {name}" in str(load_error(config_dir))


def test_a_school_type_label_longer_than_line_allows_is_rejected(config_dir: Path) -> None:
    edit(config_dir, "messages.yaml", lambda t: t.replace("label: 私立", "label: " + "私立" * 11))

    assert "school_type.choices[2].label" in str(load_error(config_dir))


def test_an_unquoted_phone_number_is_rejected(config_dir: Path) -> None:
    edit(config_dir, "agencies.yaml", lambda t: t.replace('phone: "189"', "phone: 189"))

    assert "agencies.yaml: hotlines[1].phone: write the phone number in quotes" in str(
        load_error(config_dir)
    )


def test_a_congestion_limit_must_be_a_positive_whole_number(config_dir: Path) -> None:
    edit(
        config_dir,
        "congestion.yaml",
        lambda t: t.replace("max_waiting_cases: 20", "max_waiting_cases: 0"),
    )

    assert "congestion.yaml: limits.max_waiting_cases" in str(load_error(config_dir))


def test_loaded_configuration_is_frozen() -> None:
    config = load_config(SHIPPED)

    with pytest.raises(ValueError, match="frozen"):
        config.congestion.limits.max_waiting_cases = 1  # type: ignore[misc]
