"""Stand-ins shared by tests that drive a stage without Faust or Kafka."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson


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


def journey_message(offset: int, items: list[Any], partition: int = 0) -> Any:
    """A message of the journeys topic as the journeys agent gets it: the intake's routed events at an offset."""
    from streams.stages.intake import route_key  # the stage, imported only by the tests that drive one

    value = orjson.dumps({"src": "intake", "wm": -1, "own": None, "mx": 0,
                          "e": [[route_key(item), list(item)] for item in items]})
    return SimpleNamespace(message=SimpleNamespace(partition=partition, offset=offset, value=value))


class FakeFence:
    """The zombie fence as `streams.stages.topology.may_write` reads it: one generation, open or shut."""

    def __init__(self, is_open: bool = True) -> None:
        self.open = is_open

    def generation(self) -> int:
        return 1

    def is_open(self) -> bool:
        return self.open


class KeyedTopic:
    """A Faust topic that keeps what is sent to it: (key, the JSON value decoded), in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    async def send(self, key: bytes, value: bytes) -> None:
        self.sent.append((key, orjson.loads(value)))


class LatestStore:
    """The read API's store of latest messages, for stages whose tests do not look at it."""

    async def put_latest(self, namespace: str, items: dict[str, bytes]) -> None:
        """Nothing is kept."""
