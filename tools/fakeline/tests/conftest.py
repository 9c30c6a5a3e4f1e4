"""The fake LINE platform's tests: a fresh fake per test (``line``), an HTTP client (``http``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from soudan_fakeline import FakeLineServer, running_fakeline


@pytest.fixture
async def line() -> AsyncIterator[FakeLineServer]:
    async with running_fakeline() as server:  # TEST_CHANNEL_SECRET, TEST_ACCESS_TOKEN
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
