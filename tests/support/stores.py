"""A hub.store.Store opened on a real SQLite file, closed afterwards (behind the store fixtures)."""

from __future__ import annotations

from pathlib import Path

from hub.config import StoreConfig
from hub.store import Store

__all__ = ["OpenStores"]


class OpenStores:
    """Opens stores (default: ``<tmp_path>/hub.db`` with a default StoreConfig) and closes them all at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self._open: list[Store] = []

    async def open(self, path: Path | None = None, config: StoreConfig | None = None) -> Store:
        store = Store(path or self.tmp_path / "hub.db", config or StoreConfig())
        await store.open()
        self._open.append(store)
        return store

    async def close_all(self) -> None:
        while self._open:
            await self._open.pop().close()
