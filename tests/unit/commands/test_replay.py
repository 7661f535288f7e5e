"""`attribution replay`: the pure grouping of JSON lines into per-topic batches (streams/commands/replay.py)."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from streams.commands.replay import BATCH, Grouper, group_lines, summary


def line(kind: str, n: int, **extra: object) -> bytes:
    return orjson.dumps({"event_id": f"{kind}-{n}", "type": kind, "ts": 1_700_000_000_000 + n, **extra})


def test_each_event_goes_to_the_topic_of_its_type_in_file_order() -> None:
    lines = [line("impression", 1), line("click", 2), line("impression", 3), line("order", 4), line("lead", 5),
             line("spend", 6)]
    batches, grouper = group_lines(lines)
    by_topic = {b.topic: [e["event_id"] for e in orjson.loads(b.payload)] for b in batches}
    assert by_topic == {"impressions": ["impression-1", "impression-3"], "clicks": ["click-2"],
                        "orders": ["order-4"], "leads": ["lead-5"], "spend": ["spend-6"]}
    assert dict(grouper.counts) == {"impressions": 2, "clicks": 1, "orders": 1, "leads": 1, "spend": 1}
    assert grouper.problems == []


def test_lines_are_sent_byte_for_byte_with_their_historical_ts() -> None:
    raw = b'{"type": "click", "event_id": "c1", "ts": "2025-10-01T10:00:00+02:00", "tracking_id": "t", "x": 1.50}'
    batches, _ = group_lines([raw + b"\n"])
    assert batches[0].payload == b"[" + raw + b"]"
    assert orjson.loads(batches[0].payload)[0]["ts"] == "2025-10-01T10:00:00+02:00"


def test_batches_hold_at_most_fifty_events() -> None:
    batches, grouper = group_lines([line("impression", n) for n in range(2 * BATCH + 7)])
    assert [b.count for b in batches] == [BATCH, BATCH, 7]
    assert [b.first_line for b in batches] == [1, BATCH + 1, 2 * BATCH + 1]
    assert all(len(orjson.loads(b.payload)) == b.count for b in batches)
    assert grouper.counts["impressions"] == 2 * BATCH + 7


def test_a_batch_is_cut_before_it_gets_too_large_for_a_message() -> None:
    grouper = Grouper(size=BATCH, max_bytes=1000)
    big = [line("impression", n, pad="x" * 300) for n in range(10)]
    batches = [b for n, raw in enumerate(big, 1) for b in grouper.add(n, raw)] + grouper.flush()
    assert len(batches) > 2
    assert all(len(b.payload) < 1000 + 400 for b in batches)
    assert sum(b.count for b in batches) == 10


def test_blank_lines_are_skipped() -> None:
    batches, grouper = group_lines([b"\n", line("lead", 1), b"   \n", b""])
    assert sum(b.count for b in batches) == 1 and grouper.blank == 3 and grouper.problems == []


def test_a_line_that_is_not_json_but_names_its_type_is_sent_as_is_and_reported() -> None:
    broken = b'{"event_id": "c9", "type": "click", "ts": 17'
    batches, grouper = group_lines([line("click", 1), broken])
    raw_batches = [b for b in batches if b.payload == broken]
    assert len(raw_batches) == 1 and raw_batches[0].topic == "clicks" and raw_batches[0].first_line == 2
    assert [(p.line, p.sent) for p in grouper.problems] == [(2, True)]
    assert "not JSON" in grouper.problems[0].error and "sent as-is to clicks" in grouper.problems[0].error
    assert grouper.unsent == 0 and grouper.counts["clicks"] == 2


def test_lines_whose_topic_cannot_be_told_are_reported_with_their_line_numbers() -> None:
    lines = [line("click", 1), b"not json at all", orjson.dumps({"type": "return", "ts": 1}),
             orjson.dumps({"event_id": "x"}), b"42", orjson.dumps({"type": 7})]
    batches, grouper = group_lines(lines)
    assert sum(b.count for b in batches) == 1
    assert [(p.line, p.sent) for p in grouper.problems] == [(2, False), (3, False), (4, False), (5, False),
                                                           (6, False)]
    errors = [p.error for p in grouper.problems]
    assert "no known type" in errors[0]
    assert 'unknown type "return"' in errors[1]
    assert 'no "type" field' in errors[2]
    assert "expected an event object, got int 42" in errors[3]
    assert "unknown type 7" in errors[4]
    assert grouper.unsent == 5


def test_an_array_line_is_split_into_its_events() -> None:
    array = b"[" + line("click", 1) + b"," + line("order", 2) + b',{"type": "nope"}]'
    batches, grouper = group_lines([array])
    assert sorted((b.topic, b.count) for b in batches) == [("clicks", 1), ("orders", 1)]
    assert [(p.line, p.sent) for p in grouper.problems] == [(1, False)]
    assert grouper.problems[0].error.startswith("element 2: unknown type")


def test_the_summary_lists_every_odd_line_up_to_a_limit() -> None:
    lines = [line("click", 1)] + [b"garbage"] * 25
    _, grouper = group_lines(lines)
    text = summary(grouper, "events.jsonl", 2.0, limit=20)
    assert text.startswith("replayed 1 events from events.jsonl in 2.0s")
    assert "clicks 1" in text
    assert "25 line(s) were not well-formed events; 25 of them could not be sent to any topic:" in text
    assert "  line 2: not JSON" in text and "  line 21: not JSON" in text and "line 22:" not in text
    assert "... and 5 more" in text


kinds = st.sampled_from(["impression", "click", "lead", "order", "spend", "refund", None])
odd = st.sampled_from([b"", b"  ", b"garbage", b'{"type": "click", broken', b"[]", b"null", b"{}"])


@given(st.lists(st.one_of(st.tuples(kinds, st.integers(0, 10**6)), odd), max_size=200),
       st.integers(1, 60))
def test_every_line_is_accounted_for(items: list, size: int) -> None:
    lines = [item if isinstance(item, bytes) else
             orjson.dumps({"type": item[0], "event_id": str(item[1])} if item[0] else {"event_id": "x"})
             for item in items]
    batches, grouper = group_lines(lines, size=size)
    sent = sum(b.count for b in batches)
    assert sent == sum(grouper.counts.values())
    assert sent + grouper.unsent + grouper.blank == len(lines)
    assert all(b.count <= size for b in batches)
