"""Erasure's pure decisions (CONTRACT.md section 10): requests, the ledger that confirms once, the links."""

from __future__ import annotations

import fastjsonschema
import pytest

from streams.core.erasure import (
    MAX_LINKS,
    Request,
    closed,
    complete,
    confirmation,
    erased_attribution,
    expired_ledger,
    ledger_open,
    ledger_report,
    link,
    link_expired,
    linked_orders,
    overdue,
    parse_request,
    part_id,
)
from streams.core.events import load_schema

HOUR = 3_600_000


def test_a_request_names_a_tracking_id_a_customer_id_or_both() -> None:
    assert parse_request({"tracking_id": "t1"}) == Request("t1", None)
    assert parse_request({"customer_id": "c1"}) == Request(None, "c1")
    both = parse_request({"tracking_id": "t1", "customer_id": "c1", "note": "kept and ignored"})
    assert both == Request("t1", "c1")
    assert both.parts() == [("t", "t1"), ("c", "c1")]
    assert both.as_json() == {"tracking_id": "t1", "customer_id": "c1"}


@pytest.mark.parametrize("value, error", [
    ({}, "an erasure request needs tracking_id or customer_id"),
    ({"reason": "gdpr"}, "an erasure request needs tracking_id or customer_id"),
    ([{"tracking_id": "t"}], "an erasure request must be a JSON object, got list"),
    ({"tracking_id": 5}, "tracking_id must be a string of 1-128 characters, got '5'"),
    ({"customer_id": ""}, "customer_id must be a string of 1-128 characters, got ''"),
    ({"customer_id": "x" * 129}, "customer_id must be a string of 1-128 characters"),
    ({"tracking_id": "t", "customer_id": None}, "customer_id must be string, got null"),
])
def test_a_bad_request_is_rejected_with_its_reason(value: object, error: str) -> None:
    parsed = parse_request(value)
    assert isinstance(parsed, str) and parsed.startswith(error)


def test_the_schema_agrees_with_the_parser() -> None:
    validate = fastjsonschema.compile(load_schema("erasure_request"))
    validate({"tracking_id": "t"})
    validate({"customer_id": "c"})
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        validate({})


def test_a_part_is_named_by_a_hash_never_by_the_identifier() -> None:
    pid = part_id("c", "alice@example.com")
    assert pid.startswith("c:") and "alice" not in pid
    assert pid == part_id("c", "alice@example.com") != part_id("t", "alice@example.com")


def test_the_request_is_confirmed_once_every_part_and_every_part_found_reported() -> None:
    c, t1, t2 = part_id("c", "C"), part_id("t", "T1"), part_id("t", "T2")
    row = ledger_open(None, {"customer_id": "C"}, [c], at=1000)
    assert not complete(row)
    row = ledger_report(row, c, rows=3, found=[t1, t2], at=1100)  # the customer's tracking IDs are parts too
    assert not complete(row)
    row = ledger_report(row, t1, rows=2, found=[], at=1200)
    assert not complete(row)
    row = ledger_report(row, t2, rows=4, found=[], at=1300)
    assert complete(row)
    assert confirmation(row, 1400) == {"request": {"customer_id": "C"}, "erased_at": 1400, "rows": 9}


def test_reports_before_the_request_is_known_wait_for_it() -> None:
    t = part_id("t", "T")
    row = ledger_report(None, t, rows=1, found=[], at=5)
    assert not complete(row)  # the request itself is not known yet: no confirmation without it
    row = ledger_open(row, {"tracking_id": "T"}, [t], at=4)
    assert complete(row) and row["at"] == 4


def test_a_part_reported_twice_after_a_crash_counts_once() -> None:
    t = part_id("t", "T")
    row = ledger_open(None, {"tracking_id": "T"}, [t], at=0)
    first = ledger_report(row, t, rows=5, found=[], at=1)
    again = ledger_report(first, t, rows=0, found=[], at=2)  # the second pass found nothing left
    assert confirmation(again, 3)["rows"] == 5


def test_a_confirmed_request_stays_closed_and_names_nobody() -> None:
    t = part_id("t", "T")
    done = ledger_report(ledger_open(None, {"tracking_id": "T"}, [t], at=0), t, 1, [], 1)
    marker = closed(done)
    assert "T" not in str(marker)
    assert ledger_report(marker, t, 1, [], 2) == marker  # read again after a crash: no second confirmation
    assert ledger_open(marker, {"tracking_id": "T"}, [t], 3) == marker
    assert not complete(marker)
    assert not expired_ledger(marker, 2 * HOUR, HOUR)
    assert expired_ledger(marker, 2 * HOUR + 1, HOUR)


def test_an_open_request_past_the_deadline_is_overdue_once() -> None:
    row = ledger_open(None, {"tracking_id": "T"}, [part_id("t", "T")], at=0)
    assert not overdue(row, HOUR, HOUR)
    assert overdue(row, HOUR + 1, HOUR)
    assert not overdue({**row, "late": True}, HOUR + 1, HOUR)


def test_a_link_row_keeps_each_value_once_newest_last_and_bounded() -> None:
    row = link(None, ["a", "b"], 100)
    assert row == [100, ["a", "b"]]
    assert link(row, ["a"], 50) is None  # nothing new: no write
    assert link(row, ["a"], 200) == [200, ["a", "b"]]
    many = link(row, [str(i) for i in range(MAX_LINKS + 5)], 100)
    assert many is not None and len(many[1]) == MAX_LINKS and many[1][-1] == str(MAX_LINKS + 4)
    assert link_expired(row, 101) and not link_expired(row, 100)


def test_an_erased_attribution_keeps_its_key_and_holds_no_identifier() -> None:
    message = erased_attribution("order-1")
    assert message == {"conversion_id": "order-1", "erased": True}
    validate = fastjsonschema.compile(load_schema("attribution"))
    validate(message)
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        validate({**message, "tracking_id": "T"})


def test_a_customer_link_row_names_its_order_ids_apart_from_its_tracking_ids() -> None:
    row = link(None, ["tid-1"], 10)
    assert row == [10, ["tid-1"]] and linked_orders(row) == []  # no order: the row keeps its earlier form
    row = link(row, ["tid-1"], 10, ["A-1"])
    assert row == [10, ["tid-1"], ["A-1"]] and linked_orders(row) == ["A-1"]
    assert link(row, ["tid-1"], 5, ["A-1"]) is None  # nothing new
    row = link(row, ["tid-2"], 12, ["A-2", "A-2"])
    assert row == [12, ["tid-1", "tid-2"], ["A-1", "A-2"]]
    assert linked_orders(None) == []
