"""Where a profiled worker's time goes: a summary of py-spy's raw (collapsed-stack) output. Pure.

py-spy runs with `--gil --threads`: each line is `thread (id): NAME;frame;frame;... COUNT`, a frame
being `function (file:line)`, and only samples holding the GIL count, i.e. Python's CPU time.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
STDLIB = {"asyncio", "selectors", "socket", "ssl", "json", "logging", "threading", "collections", "typing",
          "functools", "contextlib", "enum", "abc", "weakref", "heapq", "re", "traceback", "dataclasses"}


def parse(text: str) -> list[tuple[str, list[tuple[str, str]], int]]:
    """(thread name, [(function, file)], samples) per line of collapsed stacks."""
    out = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        parts = stack.split(";")
        thread = parts[0].split(": ", 1)[-1] if parts[0].startswith("thread") else "?"
        frames = []
        for part in parts[1:] if parts[0].startswith("thread") else parts:
            match = FRAME.match(part)
            frames.append((match["func"], match["file"]) if match else (part, ""))
        out.append((thread, frames, int(count)))
    return out


def package(file: str) -> str:
    """The library a source file belongs to, as py-spy shortens its path."""
    if not file:
        return "?"
    if file.startswith("<frozen"):
        return "stdlib"
    head = file.split("/", 1)[0]
    if head in STDLIB or file.endswith(".py") and "/" not in file and head[:-3] in STDLIB:
        return "stdlib"
    return head.removesuffix(".py")


def trunk(name: str, share: float) -> bool:
    """Frames every sample passes through (the event loop, the worker's entry point): no information."""
    return share > 0.6 or "(asyncio/" in name or "(threading.py" in name or "(mode/services.py" in name


FAUST_PARTS = (  # (marker in a frame's function or file, part), checked on every frame, first hit wins
    ("on_message", "Faust conductor/fetcher: records -> agent streams"),
    ("Fetcher._fetcher", "Faust conductor/fetcher: records -> agent streams"),
    ("Consumer._drain_messages", "Faust conductor/fetcher: records -> agent streams"),
    ("ProducerBuffer.", "Faust publish: message futures, producer buffer"),
    ("Topic.publish_message", "Faust publish: message futures, producer buffer"),
    ("Topic._on_published", "Faust publish: message futures, producer buffer"),
    ("aiokafka/producer/", "aiokafka producer: batches, produce requests"),
    ("aiokafka/conn.py", "aiokafka connections: socket I/O, responses"),
    ("commit", "offset commits"),
    ("faust/sensors/", "Faust sensors"),
)


def stage(thread: str, frames: list[tuple[str, str]]) -> str:
    """The part of the worker a sample belongs to: the outermost agent, timer or service task of the project on
    its stack (the intake is a service of its own), else the Faust or aiokafka machinery it is in, else the
    asyncio loop itself."""
    if thread != "MainThread":
        return f"thread {thread}: Faust's consumer thread (aiokafka fetches)"
    for func, file in frames:
        if file.startswith("streams/stages/") and (file, func) not in ENTRY_POINTS:
            return f"{file.removeprefix('streams/')}: {func.removeprefix('register.<locals>.')}"
    for func, file in frames:
        for marker, part in FAUST_PARTS:
            if marker in func or marker in file:
                return part
    return "asyncio loop: scheduling callbacks, futures and tasks"


# The process's own entry (`attribution worker` runs the event loop inside it): on every stack, not a part.
ENTRY_POINTS = {("streams/stages/worker.py", "run"), ("streams/stages/intake_process.py", "run")}
BREAKDOWNS = ("JourneyStage.absorb_batch", "JourneyStage.absorb", "Intake.handle")


def children(stacks: list[tuple[str, list[tuple[str, str]], int]], parent: str) -> tuple[int, list[tuple[str, float]]]:
    """Samples under the first frame named `parent`, split by the function it called ("<self>": its own code)."""
    counts: Counter[str] = Counter()
    for _, frames, count in stacks:
        names = [func for func, _ in frames]
        if parent in names:
            i = names.index(parent)
            counts[names[i + 1] if i + 1 < len(names) else "<self>"] += count
    total = sum(counts.values())
    return total, [(name, n / total) for name, n in counts.most_common(8)] if total else []


def summarize(text: str, top: int = 15) -> dict[str, Any]:
    stacks = parse(text)
    total = sum(count for _, _, count in stacks) or 1
    threads: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    for thread, frames, count in stacks:
        threads[thread] += count
        stages[stage(thread, frames)] += count
        if not frames:
            continue
        func, file = frames[-1]
        leaf[f"{func} ({file})"] += count
        packages[package(file)] += count
        for name in {f"{f} ({p})" for f, p in frames}:
            inclusive[name] += count

    def share(counter: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(name, count / total) for name, count in counter.most_common(n)]

    project = Counter({name: count for name, count in inclusive.items()
                       if "(streams/" in name and not trunk(name, count / total)})
    return {
        "samples": total,
        "threads": share(threads, 5),
        "stages": share(stages, 20),
        "packages": share(packages, 12),
        "self": share(leaf, top),
        "inclusive": share(Counter({n: c for n, c in inclusive.items() if not trunk(n, c / total)}), top),
        "project": share(project, top),
        "breakdowns": {parent: children(stacks, parent) for parent in BREAKDOWNS},
    }
