"""``soudan-dispatch``: the only service that talks to the LINE Messaging API.

``soudan-dispatch`` runs the service. ``soudan-dispatch richmenu apply`` creates the rich menu
from the configuration, uploads its image and makes it the default (needs only the LINE settings
and ``SOUDAN_CONFIG_DIR``); ``soudan-dispatch richmenu render --output menu.png`` only draws it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from soudan_shared.config import ConfigError, SoudanConfig, load_config
from soudan_shared.runtime import serve, setup_logging
from soudan_shared.settings import _FileSecretsSource, load_settings

from soudan_dispatch.app import SERVICE, create_app
from soudan_dispatch.line import LineClient, LineError, TokenSource
from soudan_dispatch.richmenu import RichMenuError, apply, find_font, render
from soudan_dispatch.settings import LINE_API_DATA_HOST, LINE_API_HOST, DispatchSettings


class RichMenuSettings(BaseSettings):
    """What ``richmenu`` needs: the LINE API and the configuration, no broker or store."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    line_channel_access_token: SecretStr
    line_api_base_url: str = LINE_API_HOST
    line_api_data_base_url: str | None = None
    line_request_timeout: float = 30.0
    soudan_config_dir: Path = Path("deploy/config")
    richmenu_font: Path | None = Field(default=None, description="a font with Japanese glyphs")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _FileSecretsSource(settings_cls))

    def data_base_url(self) -> str:
        if self.line_api_data_base_url:
            return self.line_api_data_base_url.rstrip("/")
        base = self.line_api_base_url.rstrip("/")
        return LINE_API_DATA_HOST if base == LINE_API_HOST else base


def richmenu(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="soudan-dispatch richmenu",
        description="Create the LINE rich menu from the configuration (messages.yaml rich_menu).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    do_apply = sub.add_parser("apply", help="create, upload the image, make it the default")
    do_apply.add_argument("--keep-old", action="store_true", help="keep the previous default")
    do_render = sub.add_parser("render", help="only draw the image")
    do_render.add_argument("--output", type=Path, required=True, help="where to write it")
    args = parser.parse_args(argv)
    settings = load_settings(RichMenuSettings, "soudan-dispatch richmenu")
    try:
        config = load_config(settings.soudan_config_dir)
        font = find_font(settings.richmenu_font)
        if args.command == "render":
            image, mime = render(config, font)
            args.output.write_bytes(image)
            print(f"wrote {args.output} ({mime}, {len(image)} bytes)")
            return 0
        rich_menu_id = asyncio.run(_apply(settings, config, font, keep_old=args.keep_old))
    except (ConfigError, RichMenuError) as exc:
        print(f"soudan-dispatch richmenu: {exc}", file=sys.stderr)
        return 2
    except LineError as exc:
        print(f"soudan-dispatch richmenu: LINE refused: {exc}", file=sys.stderr)
        return 1
    print(f"rich menu {rich_menu_id} is now the default")
    return 0


async def _apply(
    settings: RichMenuSettings, config: SoudanConfig, font: Path, *, keep_old: bool
) -> str:
    line = LineClient(
        settings.line_api_base_url,
        settings.data_base_url(),
        TokenSource(settings.line_channel_access_token.get_secret_value()),
        timeout=settings.line_request_timeout,
    )
    try:
        return await apply(line, config, font, keep_old=keep_old)
    finally:
        await line.close()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["richmenu"]:
        raise SystemExit(richmenu(argv[1:]))
    settings = load_settings(DispatchSettings, "soudan-dispatch")
    setup_logging(settings, SERVICE)
    try:
        app = create_app(settings)
    except ConfigError as exc:
        print(f"soudan-dispatch: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    serve(app, settings.dispatch_port)
