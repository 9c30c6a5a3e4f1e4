"""Settings from environment variables; every secret may also come from ``NAME_FILE``.

Each service declares the settings it needs by subclassing :class:`BaseServiceSettings` (and
the mixins below). A missing required setting stops the service at start with one line that
names it (:func:`load_settings`), never a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import Field, IPvAnyNetwork, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from soudan_shared.bus import broker_urls
from soudan_shared.topology import LINE_EVENT_SHARDS, MAX_LINE_EVENT_SHARDS, Topology

DEFAULT_LINE_API_BASE_URL = "https://api.line.me"


class _FileSecretsSource(PydanticBaseSettingsSource):
    """``NAME_FILE=/run/secrets/x`` gives NAME the file's content (Docker secrets).

    The plain variable wins when both are set; a trailing newline in the file is dropped.
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        path = os.environ.get(f"{field_name.upper()}_FILE")
        if not path:
            return None, field_name, False
        try:
            return Path(path).read_text(encoding="utf-8").rstrip("\r\n"), field_name, False
        except OSError as exc:
            raise SettingError(
                f"{field_name.upper()}_FILE={path} cannot be read ({exc.strerror})"
            ) from exc

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            value, key, _ = self.get_field_value(field, name)
            if value is not None:
                values[key] = value
        return values


class SettingError(Exception):
    """A setting is missing or wrong; the message is one line naming it."""


class BaseServiceSettings(BaseSettings):
    """What every service needs: the broker, logging, and the configuration directory."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    rabbitmq_url: SecretStr = Field(
        description=(
            "amqp://user:password@host:5672/, or the addresses of every node of a cluster "
            "separated by commas: the bus connects to the first that answers and moves to the "
            "next when its node goes away."
        ),
    )
    rabbitmq_quorum_group_size: int | None = Field(
        default=None,
        ge=1,
        description="Replicas of each quorum queue as it is declared (3 on a three-node cluster).",
    )
    bus_namespace: str = Field(
        default="soudan",
        description="Prefix of every exchange and queue; lets tests and stacks share a broker.",
    )
    line_event_shards: int = Field(
        default=LINE_EVENT_SHARDS,
        ge=1,
        le=MAX_LINE_EVENT_SHARDS,
        description=(
            "Queues the LINE events are spread over by user (ingress publishes to them, triage "
            "consumes them): at most this many triage instances share the load. The same value "
            "in every service."
        ),
    )
    log_level: str = "INFO"
    log_hash_key: SecretStr = Field(
        description="Key of the HMAC that writes LINE user ids into logs as pseudonyms.",
    )
    soudan_config_dir: Path = Path("deploy/config")
    trusted_proxies: Annotated[tuple[IPvAnyNetwork, ...], NoDecode] = Field(
        default=(),
        description=(
            "Comma-separated addresses or networks of the reverse proxies in front of the "
            "service; from them, the client's address is read from X-Forwarded-For."
        ),
    )

    @field_validator("rabbitmq_url")
    @classmethod
    def _broker_addresses(cls, value: SecretStr) -> SecretStr:
        broker_urls(value.get_secret_value())
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_networks(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    def topology(self) -> Topology:
        """The broker topology these settings describe (namespace, shard count, quorum queues'
        replicas)."""
        return Topology(
            namespace=self.bus_namespace,
            line_event_shards=self.line_event_shards,
            quorum_group_size=self.rabbitmq_quorum_group_size,
        )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        assert isinstance(env_settings, EnvSettingsSource)
        return (init_settings, env_settings, _FileSecretsSource(settings_cls))


class MongoSettings(BaseSettings):
    mongodb_url: SecretStr = Field(
        description="mongodb://… for MongoDB; memory:// for an in-process store (development only)."
    )
    store_command_metrics: bool = Field(
        default=False,
        description=(
            "Count every command sent to the store (soudan_store_commands_total, a PyMongo "
            "command listener): 0.05-0.08 ms of CPU per command, 13-19 % on top of what the "
            "client spends on one, so for measuring (bench/e2e_cost.py turns it on)."
        ),
    )


class LineSecretSettings(BaseSettings):
    line_channel_secret: SecretStr


class LineApiSettings(BaseSettings):
    line_channel_access_token: SecretStr
    line_api_base_url: str = DEFAULT_LINE_API_BASE_URL


S = TypeVar("S", bound=BaseSettings)


def describe_error(exc: ValidationError) -> str:
    """One line naming every missing or invalid setting."""
    missing: list[str] = []
    invalid: list[str] = []
    for err in exc.errors():
        name = str(err["loc"][0]).upper() if err["loc"] else "?"
        if err["type"] == "missing":
            missing.append(f"{name} (or {name}_FILE)")
        else:
            invalid.append(f"{name}: {err['msg']}")
    parts = []
    if missing:
        parts.append("missing required setting " + ", ".join(missing))
    if invalid:
        parts.append("invalid setting " + "; ".join(invalid))
    return "; ".join(parts)


def load_settings(cls: type[S], program: str, **overrides: Any) -> S:
    """Build settings from the environment, or exit with one clear line on stderr."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        message = describe_error(exc)
    except SettingError as exc:
        message = str(exc)
    print(f"{program}: {message}", file=sys.stderr)
    raise SystemExit(2)
