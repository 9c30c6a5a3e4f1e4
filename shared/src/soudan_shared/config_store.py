"""The section's configuration as it is in force: the YAML files, overridden by the console.

The YAML files in ``SOUDAN_CONFIG_DIR`` are the defaults shipped with the image (mounted
read-only in the stack). When an admin edits a section in the console (hours, fixed messages,
extra keywords, congestion limits, agencies, categories), the whole section is validated with
the same model as its file and stored in the collection :data:`CONFIG_OVERRIDES`, one document
per section (``_id`` is the section name, ``value`` the section as JSON). The configuration in
force is the YAML with every stored section replacing its file; deleting the document goes back
to the file.

A service reads it through :class:`ConfigSource`: ``await source.get()`` returns the
configuration in force and re-reads the store at most every ``ttl`` seconds (10 by default), so
an edit takes effect within that time without a restart. A service that wants it at once calls
:meth:`ConfigSource.invalidate` when it sees the fact ``settings.changed``. A stored section
that no longer validates (a newer model) is ignored with a warning and the file is used.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import structlog
import yaml
from pydantic import BaseModel, ValidationError

from soudan_shared.config import (
    CONFIG_FILES,
    ConfigError,
    SoudanConfig,
    describe_errors,
    load_config,
    parse_yaml,
)
from soudan_shared.contracts import utcnow

log = structlog.get_logger(__name__)

CONFIG_OVERRIDES: Final = "config_overrides"
SECTIONS: Final[tuple[str, ...]] = tuple(CONFIG_FILES)


def parse_section(section: str, data: Any) -> BaseModel:
    """Validate ``data`` as ``section``; :class:`ConfigError` (one line) when it is not valid."""
    if section not in CONFIG_FILES:
        raise ConfigError(section, "unknown configuration section")
    name, model = CONFIG_FILES[section]
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise ConfigError(name, describe_errors(exc)) from None


def parse_section_yaml(section: str, text: str) -> BaseModel:
    """Validate YAML text as ``section``, with the same guards as the files themselves."""
    name = CONFIG_FILES[section][0] if section in CONFIG_FILES else section
    return parse_section(section, parse_yaml(text, name))


def section_yaml(value: BaseModel) -> str:
    """A section as YAML text (for editing; comments of the file are not kept).

    Settings left out (``None``) are left out here too instead of showing as ``null``: in the
    sections edited as YAML every ``None`` is a field's default, so the text reads back the same.
    """
    data = value.model_dump(mode="json", exclude_none=True)
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


async def save_override(store_db: Any, section: str, value: BaseModel, *, staff_id: str) -> None:
    """Store ``value`` (already validated) as the section in force."""
    await store_db[CONFIG_OVERRIDES].replace_one(
        {"_id": section},
        {
            "_id": section,
            "value": value.model_dump(mode="json"),
            "updated_at": utcnow(),
            "updated_by": staff_id,
        },
        upsert=True,
    )


async def delete_override(store_db: Any, section: str) -> None:
    """Go back to the YAML file for ``section``."""
    await store_db[CONFIG_OVERRIDES].delete_one({"_id": section})


async def stored_sections(store_db: Any) -> dict[str, dict[str, Any]]:
    """The stored override documents, by section."""
    docs = await store_db[CONFIG_OVERRIDES].find({}).to_list()
    return {str(doc["_id"]): doc for doc in docs}


class ConfigSource:
    """The configuration in force, cached for ``ttl`` seconds."""

    def __init__(
        self,
        config_dir: Path,
        store_db: Any | None,
        *,
        ttl: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config_dir = config_dir
        self.files = load_config(config_dir)
        self._store_db = store_db
        self._ttl = ttl
        self._clock = clock
        self._cached: SoudanConfig | None = None
        self._loaded_at = 0.0

    def invalidate(self) -> None:
        self._cached = None

    async def get(self) -> SoudanConfig:
        if self._cached is None or self._clock() - self._loaded_at >= self._ttl:
            self._cached = await self.reload()
            self._loaded_at = self._clock()
        return self._cached

    async def reload(self) -> SoudanConfig:
        if self._store_db is None:
            return self.files
        parts: dict[str, Any] = {field: getattr(self.files, field) for field in CONFIG_FILES}
        for section, doc in (await stored_sections(self._store_db)).items():
            if section not in CONFIG_FILES:
                continue
            try:
                parts[section] = parse_section(section, doc.get("value"))
            except ConfigError as exc:
                log.warning("config_override_ignored", section=section, error=str(exc))
        return SoudanConfig.model_validate(parts)

    def file_text(self, section: str) -> str:
        """The shipped YAML file of ``section``, comments included."""
        return (self.config_dir / CONFIG_FILES[section][0]).read_text(encoding="utf-8-sig")
