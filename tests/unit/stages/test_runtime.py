"""`tune_runtime`: the garbage collector's thresholds and the event loop of a worker or an intake process."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest
import uvloop

from streams.config import Settings
from streams.stages.worker import GC_THRESHOLDS, tune_runtime


@pytest.fixture
def restored() -> Iterator[None]:
    policy, thresholds = asyncio.get_event_loop_policy(), gc.get_threshold()
    yield
    asyncio.set_event_loop_policy(policy)
    gc.set_threshold(*thresholds)


def loop_type_under(settings: Settings) -> type:
    tune_runtime(settings)

    async def running() -> type:
        return type(asyncio.get_running_loop())

    return asyncio.run(running())


def test_uvloop_runs_the_loop_by_default(restored: None) -> None:
    assert loop_type_under(Settings.from_env({})) is uvloop.Loop
    assert gc.get_threshold() == GC_THRESHOLDS


def test_event_loop_asyncio_keeps_the_standard_library_s_loop(restored: None) -> None:
    loop_type = loop_type_under(Settings.from_env({"EVENT_LOOP": "asyncio"}))
    assert loop_type is not uvloop.Loop
    assert issubclass(loop_type, asyncio.BaseEventLoop)
    assert gc.get_threshold() == GC_THRESHOLDS
