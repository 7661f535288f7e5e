"""The one-pass path (streams/core/fast_events.py) gives what the schema path gives, or leaves the message to it.

`parse_message` takes a message whole with the struct generated from its kind's schema, else hands it to
`parse_with_schema`. For any input both must give the same events and the same rejections, word for word.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.config import Settings
from streams.core.events import INPUT_TOPICS, TOPIC_TYPES, load_schema, parse_message, parse_with_schema
from streams.core.fast_events import UnsupportedSchema, decode_valid, struct_for

SETTINGS = Settings.from_env({"FX_RATES": "EUR=1.1"})
TS = 1_765_000_000_000
BASE = b'{"event_id":"e","type":"impression","ts":1,"tracking_id":"t","channel":"c"'
VALID = {
    "impression": {"event_id": "i-1", "type": "impression", "ts": TS, "tracking_id": "t-1", "channel": "google_ads",
                   "campaign": "brand", "cost": 0.01},
    "click": {"event_id": "c-1", "type": "click", "ts": TS, "tracking_id": "t-1", "channel": "affiliate",
              "affiliate_id": "anna", "cost": 1, "currency": "EUR"},
    "lead": {"event_id": "l-1", "type": "lead", "ts": TS, "tracking_id": "t-1", "customer_id": "cust"},
    "order": {"event_id": "o-1", "type": "order", "ts": TS, "tracking_id": "t-1", "order_id": "A-1", "revenue": 50,
              "margin": 0.4, "promo_code": "ANNA10", "customer_id": "cust", "currency": "USD"},
    "spend": {"event_id": "s-1", "type": "spend", "ts": TS, "channel": "tiktok", "campaign": "ugc", "amount": 12.5},
    "refund": {"event_id": "r-1", "type": "refund", "ts": TS, "order_id": "A-1", "amount": 20, "currency": "EUR",
               "reason": "returned"},
}


def same(raw: bytes, topic: str) -> None:
    assert parse_message(raw, topic, SETTINGS) == parse_with_schema(raw, topic, SETTINGS)


@pytest.mark.parametrize("kind", sorted(VALID))
def test_a_plainly_valid_event_takes_the_one_pass_path_alone_and_in_a_batch(kind: str) -> None:
    struct = struct_for(kind, load_schema(kind))
    assert decode_valid(struct, orjson.dumps(VALID[kind])) is not None
    assert decode_valid(struct, orjson.dumps([VALID[kind]] * 3)) is not None
    same(orjson.dumps(VALID[kind]), f"{kind}s" if kind != "spend" else "spend")


@pytest.mark.parametrize(
    "raw",
    [
        BASE + b',"x":"\xff\xfe"}',  # invalid UTF-8 in a field no struct declares
        BASE + b',"x":1e400}',  # a number out of range there
        BASE + b',"x":' + b"[" * 2000 + b"]" * 2000 + b"}",
        BASE + b',"x":"\\ud800"}',
        BASE + b',"cost":5,"cost":-1}',
        BASE + b',"cost":-1,"cost":5}',
        BASE + b',"ts":1.0}',  # JSON Schema's integer admits it; the struct leaves it to the schema path
        BASE + b',"ts":"2026-12-07T10:00:00Z"}',
        BASE + b',"cost":true}',
        BASE + b',"currency":"USD\\n"}',
        BASE + b',"currency":"XYZ","cost":1}',  # valid by the schema, no FX rate
        b"[]",
        b"[" + BASE + b"}, 5]",
        b"5",
        b"",
    ],
)
def test_inputs_at_the_edges_of_json_and_the_schema_give_the_same_result(raw: bytes) -> None:
    same(raw, "impressions")


def test_a_schema_keyword_the_struct_cannot_say_is_refused_at_import() -> None:
    schema = {"type": "object", "properties": {"id": {"type": "string", "enum": ["a"]}}, "required": ["id"]}
    with pytest.raises(UnsupportedSchema, match="enum"):
        struct_for("odd", schema)


def test_a_required_field_with_no_exact_branch_is_refused_at_import() -> None:
    schema = {"type": "object", "properties": {"ts": {"type": "string", "format": "date-time"}}, "required": ["ts"]}
    with pytest.raises(UnsupportedSchema, match="no branch"):
        struct_for("odd", schema)


TEXT = st.text(max_size=5) | st.sampled_from(["", "x" * 129, "x" * 257, "USD", "EUR", "usd", "XYZ"])
NUMBER = st.integers(-2, 2) | st.floats(-2, 2, allow_nan=False) | st.sampled_from([0.5, 1.0, 253402300799999,
                                                                                  253402300800000, 10**19])
VALUE = st.none() | st.booleans() | TEXT | NUMBER | st.lists(st.integers(-(2**63), 2**63 - 1), max_size=2)


@st.composite
def near_valid(draw: Any, kind: str) -> dict[str, Any]:
    """A valid event of `kind` with some fields dropped, changed to any value, or added."""
    event = dict(VALID[kind])
    for name in draw(st.lists(st.sampled_from(sorted(event)), max_size=3)):
        event.pop(name, None) if draw(st.booleans()) else event.__setitem__(name, draw(VALUE))
    for name in draw(st.lists(st.sampled_from(["cost", "margin", "currency", "campaign", "extra"]), max_size=2)):
        event[name] = draw(VALUE)
    return event


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(INPUT_TOPICS), st.data())
def test_any_near_valid_message_gives_the_same_events_and_rejections(topic: str, data: Any) -> None:
    kind = TOPIC_TYPES[topic]
    events = data.draw(st.lists(near_valid(kind), min_size=1, max_size=3))
    raw = orjson.dumps(events if len(events) > 1 or data.draw(st.booleans()) else events[0])
    same(raw, topic)
