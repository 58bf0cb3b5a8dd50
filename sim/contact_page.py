"""A scripted contact on the live page, without a browser: opens the link, follows the
page's Server-Sent Events, presses "I'm on it". What the drills and the benchmarks use
to time what a person would see (the browser itself is tested with Chromium)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx


class PageVisitor:
    def __init__(self, link: str) -> None:
        self.link = link.rstrip("/")
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(10, read=None))

    async def open(self) -> int:
        """Load the page (the relay records it as opened); returns the HTTP status."""
        return (await self._http.get(self.link)).status_code

    async def events(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """``(event, data)`` from the page's live stream, as they come."""
        async for kind, data in live_stream(self._http, self.link):
            yield kind, data

    async def ack(self) -> dict[str, Any]:
        """Press "I'm on it"."""
        r = await self._http.post(self.link + "/ack")
        return dict(r.json())

    async def close(self) -> None:
        await self._http.aclose()


async def live_stream(
    http: httpx.AsyncClient, link: str
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """``(event, data)`` from the live stream of the page at ``link`` (Server-Sent
    Events, read as a browser's EventSource does)."""
    async with http.stream("GET", link + "/events") as r:
        r.raise_for_status()
        kind, data = "message", ""
        async for line in r.aiter_lines():
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
            elif not line and data:
                yield kind, json.loads(data)
                kind, data = "message", ""
