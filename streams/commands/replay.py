"""`attribution replay FILE`: a JSON-lines file of events onto the input topics (historical backfill).

Each line is one event object (a line holding a JSON array counts as that many events). It
goes to the topic of its `type` (impression -> impressions, ...), exactly as written: `ts`
and every other field unchanged, so a backfill of last month lands in last month's windows.
Lines are grouped per topic into JSON arrays of up to `BATCH` events, the input topics'
batch form, for speed.

Nothing is dropped silently. A line that is not JSON but names a known `type` is still sent,
alone and as it is, so that the worker rejects it to `events.dlq` with the raw text; a line
whose type cannot be told is reported with its line number and counted in the summary, and
the command then exits with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from streams.config import Settings
from streams.core.events import INPUT_TOPICS, TOPIC_TYPES, short_repr

BATCH = 50  # events per Kafka message
MAX_BATCH_BYTES = 512 * 1024  # keeps a message well under Kafka's default 1 MiB limit
MAX_LINE_BYTES = 1_000_000  # a single event larger than this cannot be one Kafka message
TYPE_TOPICS = {kind: topic for topic, kind in TOPIC_TYPES.items()}
_TYPE_SNIFF = re.compile(rb'"type"\s*:\s*"(impression|click|lead|order|spend)"')


class Batch(NamedTuple):
    """One Kafka message to send: a JSON array (or one raw line) of `count` events for `topic`."""

    topic: str
    payload: bytes
    count: int
    first_line: int


class Problem(NamedTuple):
    """A line that is not a well-formed event; `sent` tells whether it was produced anyway."""

    line: int
    error: str
    sent: bool


class Grouper:
    """Pure: lines in, per-topic batches out, with every line accounted for.

    `add(line_no, raw)` returns the batches that line completed; `flush()` the rest. Lines of
    one topic keep their order. `counts` holds events per topic, `problems` the odd lines.
    """

    def __init__(self, size: int = BATCH, max_bytes: int = MAX_BATCH_BYTES) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.counts: Counter[str] = Counter()
        self.problems: list[Problem] = []
        self.blank = 0
        self._parts: dict[str, list[bytes]] = {}
        self._bytes: dict[str, int] = {}
        self._first: dict[str, int] = {}

    def add(self, line_no: int, raw: bytes) -> list[Batch]:
        raw = raw.strip()
        if not raw:
            self.blank += 1
            return []
        if len(raw) > MAX_LINE_BYTES:
            error = f"line of {len(raw):,} bytes is too large for a Kafka message"
            self.problems.append(Problem(line_no, error, False))
            return []
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return self._not_json(line_no, raw, str(exc))
        if isinstance(value, list):
            out: list[Batch] = []
            for index, element in enumerate(value):
                out += self._event(line_no, orjson.dumps(element), element, f" element {index}")
            if not value:
                self.problems.append(Problem(line_no, "empty array: expected event objects", False))
            return out
        return self._event(line_no, raw, value, "")

    def flush(self) -> list[Batch]:
        return [self._take(topic) for topic in list(self._parts) if self._parts[topic]]

    @property
    def unsent(self) -> int:
        return sum(1 for p in self.problems if not p.sent)

    def _event(self, line_no: int, raw: bytes, value: Any, where: str) -> list[Batch]:
        if not isinstance(value, dict):
            self.problems.append(
                Problem(line_no, f"{where.strip() + ': ' if where else ''}expected an event object, got "
                        f"{type(value).__name__} {short_repr(value)}", False))
            return []
        kind = value.get("type")
        topic = TYPE_TOPICS.get(kind) if isinstance(kind, str) else None
        if topic is None:
            error = "no \"type\" field" if "type" not in value else f"unknown type {short_repr(kind)}"
            self.problems.append(Problem(line_no, f"{where.strip() + ': ' if where else ''}{error} "
                                         f"(expected one of {', '.join(TYPE_TOPICS)})", False))
            return []
        parts = self._parts.setdefault(topic, [])
        if not parts:
            self._first[topic] = line_no
            self._bytes[topic] = 0
        parts.append(raw)
        self._bytes[topic] += len(raw) + 1
        self.counts[topic] += 1
        if len(parts) >= self.size or self._bytes[topic] >= self.max_bytes:
            return [self._take(topic)]
        return []

    def _not_json(self, line_no: int, raw: bytes, error: str) -> list[Batch]:
        match = _TYPE_SNIFF.search(raw)
        if match is None:
            self.problems.append(Problem(line_no, f"not JSON ({error}) and no known type in it", False))
            return []
        topic = TYPE_TOPICS[match.group(1).decode()]
        self.problems.append(Problem(line_no, f"not JSON ({error}): sent as-is to {topic}, where it is rejected", True))
        self.counts[topic] += 1
        return [Batch(topic, raw, 1, line_no)]

    def _take(self, topic: str) -> Batch:
        parts = self._parts[topic]
        self._parts[topic] = []
        return Batch(topic, b"[" + b",".join(parts) + b"]", len(parts), self._first[topic])


def group_lines(lines: Iterable[bytes], size: int = BATCH) -> tuple[list[Batch], Grouper]:
    """All batches of `lines` (numbered from 1) and the grouper that holds the counts and problems."""
    grouper = Grouper(size)
    batches: list[Batch] = []
    for line_no, raw in enumerate(lines, 1):
        batches += grouper.add(line_no, raw)
    batches += grouper.flush()
    return batches, grouper


def _numbered_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as handle:
        yield from enumerate(handle, 1)


def summary(grouper: Grouper, path: str, seconds: float, limit: int = 20) -> str:
    """The closing report: events per topic, then every line that was odd (up to `limit` of them)."""
    total = sum(grouper.counts.values())
    topics = ", ".join(f"{t} {grouper.counts[t]:,}" for t in INPUT_TOPICS if grouper.counts[t])
    lines = [f"replayed {total:,} events from {path} in {seconds:.1f}s ({total / max(seconds, 1e-9):,.0f} events/s)"
             + (f": {topics}" if topics else "")]
    if grouper.problems:
        unsent = grouper.unsent
        lines.append(f"{len(grouper.problems)} line(s) were not well-formed events; "
                     f"{unsent} of them could not be sent to any topic:")
        for problem in grouper.problems[:limit]:
            lines.append(f"  line {problem.line}: {problem.error}")
        if len(grouper.problems) > limit:
            lines.append(f"  ... and {len(grouper.problems) - limit} more")
    return "\n".join(lines)


def run(settings: Settings, args: argparse.Namespace) -> int:
    """`attribution replay FILE`."""
    path = Path(args.file)
    if not path.is_file():
        print(f"attribution replay: no such file: {path}", file=sys.stderr)
        return 2
    from streams.kafka.embedded_broker import resolve_for_producer

    bootstrap, owned = resolve_for_producer(settings, "replay")
    try:
        grouper, seconds = asyncio.run(replay(bootstrap, settings, path))
    finally:
        if owned is not None:
            owned.stop()
    print(summary(grouper, str(path), seconds))
    return 1 if grouper.unsent else 0


async def replay(bootstrap: str, settings: Settings, path: Path) -> tuple[Grouper, float]:
    """Produce every event of `path`; returns the grouper (counts, problems) and the seconds it took."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    from streams.kafka.topics import ensure_topics, make_producer, wait_for_broker

    await wait_for_broker(bootstrap)
    await ensure_topics(bootstrap, settings)
    producer = make_producer(bootstrap, linger_ms=20)
    await producer.start()
    grouper = Grouper()
    started = time.monotonic()
    size = os.path.getsize(path)
    console = Console(stderr=True)
    columns = (TextColumn("replay"), BarColumn(), DownloadColumn(), TextColumn("{task.fields[events]:,} events"),
               TextColumn("{task.fields[rate]:,.0f} events/s"), TimeElapsedColumn())
    futures: list[asyncio.Future[Any]] = []
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("replay", total=size, events=0, rate=0.0)
            done = 0
            next_update = started
            for line_no, raw in _numbered_lines(path):
                done += len(raw)
                for batch in grouper.add(line_no, raw):
                    futures.append(await producer.send(batch.topic, batch.payload))
                if len(futures) >= 500:
                    await asyncio.gather(*futures)
                    futures.clear()
                now = time.monotonic()
                if now >= next_update:
                    events = sum(grouper.counts.values())
                    progress.update(task, completed=done, events=events, rate=events / max(now - started, 1e-9))
                    next_update = now + 0.2
            for batch in grouper.flush():
                futures.append(await producer.send(batch.topic, batch.payload))
            await asyncio.gather(*futures)
            now = time.monotonic()
            events = sum(grouper.counts.values())
            progress.update(task, completed=size, events=events, rate=events / max(now - started, 1e-9))
    finally:
        await producer.stop()
    return grouper, time.monotonic() - started
