"""`attribution top`: a live per-channel KPI table read from `metrics.channel` (CONTRACT.md sections 4, 7).

* `Board` (pure) keeps the latest message per (channel, window_start), the latest
  switch-off signal per channel and the latest Markov model (`metrics.markov`, section 8);
  `Board.view()` picks the current window (the newest one) and the last closed one (the
  one before it).
* `render` / `render_text` (pure) turn a view into rich tables / plain text: one table per
  window, a row per channel marked with its signal (pause red, keep yellow, scale green),
  a total row, `—` for a ratio with a zero denominator. Columns that do not fit the width
  are left out, least important first. Under them, the data-driven share of each channel
  next to its last-click share of the same converting paths.
* `watch` reads the topics (no consumer group, from the earliest offset) and shows the
  board every second: a `rich.live` view on a terminal, a printed table every few seconds
  otherwise. `run` is the `attribution top` command.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import orjson
from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from streams.config import Settings
from streams.core.kpis import KPIS, Figures
from streams.kafka.topics import METRICS_CHANNEL_TOPIC, METRICS_MARKOV_TOPIC, SIGNALS_TOPIC

DASH = "—"
ACTION_STYLES = {"pause": "bold red", "keep": "yellow", "scale": "bold green"}
DIRECT = "(direct)"
KEEP_WINDOWS = 4  # windows remembered per channel


# --- the board: latest figures per channel and window, latest signal per channel ------------------------


class WindowView(NamedTuple):
    start: int
    end: int
    final: bool  # every row of the window is final
    rows: tuple[dict[str, Any], ...]  # metrics.channel messages, one per channel, sorted


class View(NamedTuple):
    current: WindowView | None
    previous: WindowView | None
    actions: dict[str, str]  # channel -> latest action
    markov: tuple[dict[str, Any], ...] = ()  # the newest metrics.markov computation, a message per channel


class Board:
    """Pure state of the table: feed it messages, ask it for a view."""

    def __init__(self, keep_windows: int = KEEP_WINDOWS) -> None:
        self.keep_windows = keep_windows
        self._windows: dict[int, dict[str, tuple[tuple[int, int], dict[str, Any]]]] = {}
        self._actions: dict[str, tuple[tuple[int, int], str]] = {}
        self._markov: dict[str, dict[str, Any]] = {}
        self.metrics_seen = 0
        self.ignored = 0

    def add_metric(self, value: Any, position: tuple[int, int] = (0, 0)) -> bool:
        """A `metrics.channel` message; `position` (partition, offset) keeps an older re-read from winning."""
        if not isinstance(value, dict) or not isinstance(value.get("channel"), str):
            self.ignored += 1
            return False
        start = value.get("window_start")
        if not isinstance(start, int) or value.get("campaign") not in (None, ""):
            self.ignored += 1
            return False
        if self._windows and start < min(self._windows) and len(self._windows) >= self.keep_windows:
            return False  # older than every window kept
        window = self._windows.setdefault(start, {})
        held = window.get(value["channel"])
        if held is not None and held[0][0] == position[0] and held[0][1] > position[1]:
            return False
        window[value["channel"]] = (position, value)
        self.metrics_seen += 1
        while len(self._windows) > self.keep_windows:
            del self._windows[min(self._windows)]
        return True

    def add_signal(self, key: bytes | str | None, value: Any, position: tuple[int, int] = (0, 0)) -> bool:
        """A `signals` message; only channel-level ones (key = channel, no campaign) mark rows."""
        if isinstance(key, bytes):
            key = key.decode("utf-8", "replace")
        if value is None and key and "/" not in key:
            self._actions.pop(key, None)
            return True
        if not isinstance(value, dict) or value.get("campaign") not in (None, ""):
            return False
        channel = value.get("channel") or key
        action = value.get("action")
        if not isinstance(channel, str) or not isinstance(action, str) or "/" in (key or ""):
            return False
        held = self._actions.get(channel)
        if held is not None and held[0][0] == position[0] and held[0][1] > position[1]:
            return False
        self._actions[channel] = (position, action)
        return True

    def add_markov(self, value: Any) -> bool:
        """A `metrics.markov` message: the newest computation per channel wins."""
        if not isinstance(value, dict) or not isinstance(value.get("channel"), str) \
                or not isinstance(value.get("computed_at"), int) or _num(value.get("share")) is None:
            self.ignored += 1
            return False
        held = self._markov.get(value["channel"])
        if held is not None and held["computed_at"] > value["computed_at"]:
            return False
        self._markov[value["channel"]] = value
        return True

    def markov_rows(self) -> tuple[dict[str, Any], ...]:
        """The newest computation's channels (one that left the window is not in it), by share, largest first."""
        if not self._markov:
            return ()
        newest = max(m["computed_at"] for m in self._markov.values())
        rows = [m for m in self._markov.values() if m["computed_at"] == newest]
        return tuple(sorted(rows, key=lambda m: (-m["share"], m["channel"])))

    def view(self) -> View:
        starts = sorted(self._windows, reverse=True)
        windows = [self._window_view(start) for start in starts[:2]]
        actions = {channel: action for channel, (_, action) in self._actions.items()}
        return View(windows[0] if windows else None, windows[1] if len(windows) > 1 else None, actions,
                    self.markov_rows())

    def _window_view(self, start: int) -> WindowView:
        rows = [value for _, value in self._windows[start].values()]
        rows.sort(key=lambda r: (r["channel"] == DIRECT, r["channel"]))
        end = max((r.get("window_end") or start for r in rows), default=start)
        return WindowView(start, end, all(r.get("final") is True for r in rows), tuple(rows))


# --- rendering -------------------------------------------------------------------------------------------


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def fmt_count(value: Any) -> str:
    v = _num(value)
    return DASH if v is None else f"{v:,.0f}"


def fmt_credit(value: Any) -> str:
    """Credited leads/orders are sums of weights: whole numbers as such, else one decimal."""
    v = _num(value)
    if v is None:
        return DASH
    return f"{v:,.0f}" if abs(v - round(v)) < 0.05 else f"{v:,.1f}"


def fmt_money(value: Any) -> str:
    v = _num(value)
    return DASH if v is None else f"{v:,.2f}"


def fmt_percent(value: Any) -> str:
    v = _num(value)
    return DASH if v is None else f"{v * 100:.2f}%"


def fmt_times(value: Any) -> str:
    v = _num(value)
    return DASH if v is None else f"{v:,.2f}x"


def fmt_signed_percent(value: Any) -> str:
    v = _num(value)
    return DASH if v is None else f"{v * 100:+,.0f}%"


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    fmt: Callable[[Any], str]
    priority: int  # lower: kept longer when the width is short
    optional: bool = False  # shown only when some message carries the field (ROMI, gross profit)


COLUMNS: tuple[Column, ...] = (
    Column("impressions", "Impr", fmt_count, 1),
    Column("clicks", "Clicks", fmt_count, 2),
    Column("leads", "Leads", fmt_credit, 12),
    Column("orders", "Orders", fmt_credit, 3),
    Column("revenue", "Revenue", fmt_money, 4),
    Column("spend", "Spend", fmt_money, 5),
    Column("gross_profit", "Profit", fmt_money, 18, optional=True),
    Column("ctr", "CTR", fmt_percent, 9),
    Column("cpc", "CPC", fmt_money, 14),
    Column("cpm", "CPM", fmt_money, 16),
    Column("cpl", "CPL", fmt_money, 15),
    Column("cpa", "CPA", fmt_money, 10),
    Column("cac", "CAC", fmt_money, 11),
    Column("conversion_rate", "Conv", fmt_percent, 13),
    Column("aov", "AOV", fmt_money, 17),
    Column("roas", "ROAS", fmt_times, 6),
    Column("roi", "ROI", fmt_signed_percent, 8),
    Column("romi", "ROMI", fmt_signed_percent, 7, optional=True),
)
_FIXED_HEADERS = ("Channel", "Signal")


def total_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The sum of the channels' figures, with KPIs computed from the sums (streams.core.kpis)."""
    total = Figures()
    for row in rows:
        total = total + Figures(*(_num(row.get(field)) or 0.0 for field in Figures._fields))
    out: dict[str, Any] = {"channel": "total", **total._asdict()}
    out.update({name: kpi(total) for name, kpi in KPIS.items()})
    return out


def _cells(row: dict[str, Any], columns: Sequence[Column]) -> list[str]:
    return [column.fmt(row.get(column.key)) for column in columns]


def choose_columns(view: View, width: int | None) -> list[Column]:
    """The columns to show: optional ones only when present, then as many as fit `width`, by priority."""
    windows = [w for w in (view.current, view.previous) if w is not None]
    rows = [row for w in windows for row in w.rows]
    wanted = [c for c in COLUMNS if not c.optional or any(c.key in row for row in rows)]
    if width is None:
        return wanted
    samples = [*rows, *(total_row(w.rows) for w in windows)]
    channel_width = max([len(h) for h in _FIXED_HEADERS[:1]] + [len(str(r.get("channel", ""))) for r in samples])
    signal_width = max([len(_FIXED_HEADERS[1])] + [len(a) for a in view.actions.values()])
    used = channel_width + signal_width + 4  # edges, padding and the gaps of the first two columns
    chosen: set[str] = set()
    for column in sorted(wanted, key=lambda c: c.priority):
        natural = max([len(column.header)] + [len(column.fmt(r.get(column.key))) for r in samples])
        if used + natural + 3 > width:
            continue
        used += natural + 3
        chosen.add(column.key)
    return [c for c in wanted if c.key in chosen]


def _clock(ms: int, with_date: bool) -> str:
    moment = datetime.fromtimestamp(ms / 1000)
    return moment.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S")


def window_title(label: str, window: WindowView) -> str:
    with_date = window.end - window.start >= 86_400_000
    state = "final" if window.final else "open" if label == "current" else "closing"
    return f"{label} window {_clock(window.start, with_date)}–{_clock(window.end, with_date)} ({state})"


def render_table(label: str, window: WindowView, actions: dict[str, str], columns: Sequence[Column]) -> Table:
    table = Table(title=window_title(label, window), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("Channel", no_wrap=True)
    table.add_column("Signal", no_wrap=True)
    for column in columns:
        table.add_column(column.header, justify="right", no_wrap=True)
    for row in window.rows:
        action = actions.get(row["channel"], "")
        style = ACTION_STYLES.get(action, "")
        table.add_row(Text(row["channel"], style=style), Text(action or DASH, style=style), *_cells(row, columns))
    total = total_row(window.rows)
    table.add_section()
    table.add_row(Text("total", style="bold"), "", *_cells(total, columns), style="bold")
    return table


def render_markov(rows: Sequence[dict[str, Any]]) -> Table:
    """Per channel, the data-driven share (Markov removal effects) next to the last-click share of the same
    converting paths, over MARKOV_WINDOW."""
    first = rows[0]
    title = (f"data-driven vs last click: {fmt_count(first.get('paths'))} paths, "
             f"{fmt_count(first.get('converting_paths'))} converting")
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for header in ("Channel", "Data-driven", "Last click", "Conversions", "Revenue", "Removal effect"):
        table.add_column(header, justify="left" if header == "Channel" else "right", no_wrap=True)
    for row in rows:
        table.add_row(row["channel"], fmt_percent(row.get("share")), fmt_percent(row.get("last_click_share")),
                      fmt_credit(row.get("conversions")), fmt_money(row.get("revenue")),
                      fmt_percent(row.get("removal_effect")))
    return table


def render(view: View, width: int | None = None, caption: str = "") -> RenderableType:
    """A view -> a rich renderable: the current window's table, then the last one's, then the Markov shares."""
    if view.current is None:
        return Text(f"waiting for figures on {METRICS_CHANNEL_TOPIC}…" + (f"  {caption}" if caption else ""))
    columns = choose_columns(view, width)
    parts: list[RenderableType] = [render_table("current", view.current, view.actions, columns)]
    if view.previous is not None:
        parts.append(render_table("last", view.previous, view.actions, columns))
    if view.markov:
        parts.append(render_markov(view.markov))
    if caption:
        parts.append(Text(caption, style="dim"))
    return Group(*parts)


def render_text(view: View, width: int = 200, caption: str = "") -> str:
    """A view -> plain text, `width` columns wide (no colour)."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False, legacy_windows=False)
    console.print(render(view, width, caption))
    return buffer.getvalue()


# --- reading the topics --------------------------------------------------------------------------------


async def watch(
    bootstrap: str,
    *,
    console: Console | None = None,
    seconds: float = 0.0,
    once: bool = False,
    stop: asyncio.Event | None = None,
    on_first: Callable[[], str | None] | None = None,
    caption: str = "",
    print_every: float = 5.0,
    once_timeout: float = 15.0,
) -> Board:
    """Follow `metrics.channel` and `signals` and show the board until `stop`, `seconds` or, with `once`,
    until everything already on the topics is read (then print one table)."""
    from aiokafka import AIOKafkaConsumer

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # unknown-topic warnings would tear the table
    console = console or Console()
    stop = stop or asyncio.Event()
    board = Board()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        metadata_max_age_ms=2_000,
        fetch_max_wait_ms=200,
    )
    await consumer.start()
    consumer.subscribe([METRICS_CHANNEL_TOPIC, SIGNALS_TOPIC, METRICS_MARKOV_TOPIC])
    started = time.monotonic()
    first_shown = False

    def show_caption() -> str:
        return f"{caption}  updated {datetime.now():%H:%M:%S}".strip()

    def notify_first() -> None:
        nonlocal first_shown
        if not first_shown and board.view().current is not None:
            first_shown = True
            message = on_first() if on_first else None
            if message:
                console.print(message)

    try:
        if once:
            await _read_to_end(consumer, board, once_timeout)
            notify_first()
            console.print(render(board.view(), console.width, show_caption()))
            return board
        live = None
        if console.is_terminal:
            from rich.live import Live

            live = Live(render(board.view(), console.width, show_caption()), console=console,
                        refresh_per_second=4, transient=False)
            live.start()
        next_show = time.monotonic()
        last_printed = ""
        try:
            while not stop.is_set():
                if seconds and time.monotonic() - started >= seconds:
                    break
                batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
                _ingest(board, batches)
                now = time.monotonic()
                if now < next_show:
                    continue
                notify_first()
                if live is not None:
                    live.update(render(board.view(), console.width, show_caption()))
                    next_show = now + 1.0
                else:
                    text = render_text(board.view(), console.width)
                    if text != last_printed:
                        console.print(render(board.view(), console.width, show_caption()))
                        last_printed = text
                    next_show = now + print_every
        finally:
            if live is not None:
                live.update(render(board.view(), console.width, show_caption()))
                live.stop()
            elif seconds:
                text = render_text(board.view(), console.width)
                if text != last_printed:
                    console.print(render(board.view(), console.width, show_caption()))
        return board
    finally:
        await consumer.stop()


def _ingest(board: Board, batches: dict[Any, list[Any]]) -> None:
    for tp, records in batches.items():
        for record in records:
            try:
                value = None if record.value is None else orjson.loads(record.value)
            except orjson.JSONDecodeError:
                board.ignored += 1
                continue
            position = (tp.partition, record.offset)
            if tp.topic == METRICS_CHANNEL_TOPIC:
                board.add_metric(value, position)
            elif tp.topic == METRICS_MARKOV_TOPIC:
                board.add_markov(value)
            else:
                board.add_signal(record.key, value, position)


async def _read_to_end(consumer: Any, board: Board, timeout: float) -> None:
    """Read until every assigned partition is at its end offset as of when it was assigned."""
    deadline = time.monotonic() + timeout
    ends: dict[Any, int] = {}
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
        _ingest(board, batches)
        now = time.monotonic()
        if batches:
            quiet_since = now
        assignment = consumer.assignment()
        if not assignment:
            if now - quiet_since > 3.0:
                return  # the topics do not exist (yet)
            continue
        missing = [tp for tp in assignment if tp not in ends]
        if missing:
            ends.update(await consumer.end_offsets(missing))
        positions = {tp: await consumer.position(tp) for tp in assignment}
        if all(positions[tp] >= ends[tp] for tp in assignment):
            return
        if now - quiet_since > 3.0:
            return  # a broker whose end offsets run ahead of what it serves


def run(settings: Settings, args: argparse.Namespace) -> int:
    """`attribution top`."""
    from streams.kafka.embedded_broker import resolve_bootstrap

    bootstrap, owned = resolve_bootstrap(settings)
    if owned is not None:
        owned.stop()
        print("attribution top: nothing to watch: KAFKA_BOOTSTRAP is unset and no embedded broker is running; "
              "start `attribution demo`, or set KAFKA_BOOTSTRAP to your cluster", file=sys.stderr)
        return 2
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 200))
    caption = f"{METRICS_CHANNEL_TOPIC} on {bootstrap}, money in {settings.reporting_currency}"
    return asyncio.run(_run(bootstrap, console, args, caption))


async def _run(bootstrap: str, console: Console, args: argparse.Namespace, caption: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await watch(bootstrap, console=console, seconds=args.seconds, once=args.once, stop=stop, caption=caption)
    return 0
