"""Stand-ins shared by tests that drive a stage without Faust or Kafka."""

from __future__ import annotations

from typing import Any


class FakeTable(dict):  # type: ignore[type-arg]
    """What a Faust table with the memory store is to a stage: a dict, `.data` being itself; the
    changelog records of `put_rows` go nowhere."""

    @property
    def data(self) -> FakeTable:
        return self

    def row(self, key: str) -> Any:
        return self.get(key)

    def put_rows(self, rows: dict[str, Any]) -> None:
        for key, row in rows.items():
            if row is None:
                self.pop(key, None)
            else:
                self[key] = row

    async def send_changes(self) -> None:
        """Nothing is sent here."""

    def partition_for(self, key: str) -> int:
        """Every key on partition 0 (a test that needs more subclasses this)."""
        return 0
