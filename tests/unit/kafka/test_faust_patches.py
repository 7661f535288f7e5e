"""The longer wait of an idle fetch (`streams.kafka.faust_patches.idle_fetch_wait`): only a fetch that names every
partition of its broker waits longer, so a partition left out of it is never held back by it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.protocol.fetch import FetchRequest

from streams.kafka.faust_patches import idle_fetch_wait, lengthen_idle_fetches

SHORT, LONG = 10, 500


def request(wait: int = SHORT) -> FetchRequest:
    return FetchRequest(wait, 1, 50 * 2**20, 0, [("attribution-journey-events", [(0, 0, 2**20)])])


def actions(*, reset: dict[int, list[Any]] | None = None, invalid_metadata: bool = False,
            resume: list[Any] | None = None, wait: int = SHORT) -> tuple[Any, ...]:
    return [(1, request(wait)), (2, request(wait))], reset or {}, 0.2, invalid_metadata, resume or []


def waits(decided: tuple[Any, ...]) -> list[int]:
    return [req._max_wait_ms for _, req in decided[0]]


def test_a_fetch_naming_every_partition_of_its_broker_waits_longer() -> None:
    decided = actions()
    lengthen_idle_fetches(decided, buffered=False, ms=LONG)
    assert waits(decided) == [LONG, LONG]


def test_buffered_records_keep_the_short_wait() -> None:
    decided = actions()
    lengthen_idle_fetches(decided, buffered=True, ms=LONG)
    assert waits(decided) == [SHORT, SHORT]


def test_a_paused_partition_keeps_the_short_wait() -> None:
    decided = actions(resume=[object()])
    lengthen_idle_fetches(decided, buffered=False, ms=LONG)
    assert waits(decided) == [SHORT, SHORT]


def test_a_position_being_reset_keeps_the_short_wait() -> None:
    decided = actions(reset={3: [object()]})
    lengthen_idle_fetches(decided, buffered=False, ms=LONG)
    assert waits(decided) == [SHORT, SHORT]


def test_an_unknown_leader_keeps_the_short_wait() -> None:
    decided = actions(invalid_metadata=True)
    lengthen_idle_fetches(decided, buffered=False, ms=LONG)
    assert waits(decided) == [SHORT, SHORT]


def test_a_consumers_own_longer_wait_is_kept() -> None:
    decided = actions(wait=1_000)
    lengthen_idle_fetches(decided, buffered=False, ms=LONG)
    assert waits(decided) == [1_000, 1_000]


def test_the_patch_lengthens_what_aiokafka_decided_and_is_applied_once(monkeypatch: pytest.MonkeyPatch) -> None:
    decided = actions()
    monkeypatch.setattr(Fetcher, "_get_actions_per_node", lambda self, assignment: decided)
    idle_fetch_wait(LONG)
    patched = Fetcher._get_actions_per_node
    idle_fetch_wait(LONG)
    assert Fetcher._get_actions_per_node is patched
    assert patched(SimpleNamespace(_records={}), None) is decided
    assert waits(decided) == [LONG, LONG]
    buffered = actions()
    monkeypatch.setattr(Fetcher, "_get_actions_per_node", lambda self, assignment: buffered)
    idle_fetch_wait(LONG)
    Fetcher._get_actions_per_node(SimpleNamespace(_records={"tp": object()}), None)
    assert waits(buffered) == [SHORT, SHORT]
