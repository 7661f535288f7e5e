"""Erasure (CONTRACT.md section 10): the decisions, pure (no Kafka, no clock, no Redis).

A request names a `tracking_id`, a `customer_id`, or both. It is split into PARTS, one per identifier,
each sent to the partition that owns that identifier's rows (`partition_of(identifier)`), where every
store registered for that kind of identifier erases what it holds (`streams.stages.erasure.Erasers`).
A part may find more parts: an erasure by `customer_id` also erases the tracking IDs seen with that
customer (the customer's LINK row names them), each on its own partition.

One place confirms: the LEDGER row of the request, on the partition of the request's id. Each part
reports there what it erased and which parts it found; the request is confirmed when every part wanted
(the request's own and those found) has reported. Reports are idempotent (a part is known by a hash of
its kind and identifier, never the identifier itself), so a part done twice after a crash is counted
once; a part's rows are those it deleted, the largest of its reports (a second pass finds nothing left).

Links, kept only for erasure, no longer than `CUSTOMER_RETENTION` after the newest conversion they name:
- `t|<tracking_id>`: the `attributions` keys (conversion event ids) of that visitor, to supersede them;
- `c|<customer_id>`: the tracking IDs seen with that customer (on leads and orders).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import fastjsonschema

from streams.core.events import _validator, schema_error

Kind = Literal["t", "c"]  # a part by tracking_id, by customer_id (a store of another key may add its own)
KIND_FIELDS: dict[str, str] = {"t": "tracking_id", "c": "customer_id"}
MAX_IDENTIFIER_CHARS = 128
MAX_LINKS = 1_000  # a hot key (a shared cookie, a test account) keeps its newest links: a row stays small
LINK_TRACKING = "t|"
LINK_CUSTOMER = "c|"


class Request(NamedTuple):
    """A valid erasure request."""

    tracking_id: str | None
    customer_id: str | None

    def as_json(self) -> dict[str, str]:
        return {field: value for field, value in (("tracking_id", self.tracking_id),
                                                  ("customer_id", self.customer_id)) if value is not None}

    def parts(self) -> list[tuple[str, str]]:
        """(kind, identifier) of each part the request itself names."""
        return [(kind, value) for kind, value in (("t", self.tracking_id), ("c", self.customer_id))
                if value is not None]


def parse_request(value: Any) -> Request | str:
    """A decoded `erasure-requests` value -> the request, or what is wrong with it (for `events.dlq`), judged
    by `schemas/erasure_request.json`; the wording names the field and its value."""
    try:
        _validator("erasure_request")(value)
    except fastjsonschema.JsonSchemaValueException as exc:
        if isinstance(value, dict) and exc.rule != "anyOf":
            return schema_error(exc)
    if not isinstance(value, dict):
        return f"an erasure request must be a JSON object, got {type(value).__name__}"
    found: dict[str, str] = {}
    for field in ("tracking_id", "customer_id"):
        if field not in value or value[field] is None:
            continue
        text = value[field]
        if not isinstance(text, str) or not 1 <= len(text) <= MAX_IDENTIFIER_CHARS:
            return f"{field} must be a string of 1-{MAX_IDENTIFIER_CHARS} characters, got {str(text)[:80]!r}"
        found[field] = text
    if not found:
        return "an erasure request needs tracking_id or customer_id"
    return Request(found.get("tracking_id"), found.get("customer_id"))


def part_id(kind: str, identifier: str) -> str:
    """A part's name in the ledger: its kind and a hash of its identifier (the ledger holds no identifier
    beyond the request itself, which the confirmation repeats)."""
    return kind + ":" + hashlib.blake2b(identifier.encode(), digest_size=10).hexdigest()


# -- the ledger: one row per request, on the partition of the request id -----------------------------------
# {"req": request | None, "at": received ms, "want": [part ids], "done": {part id: rows}, "late": bool}
# A confirmed request leaves a closed marker {"closed": at} (no identifier) so that a report or the request
# read again after a crash does not open it again; `expired_ledger` forgets it after the deadline.


def ledger_open(row: dict[str, Any] | None, request: dict[str, str], parts: list[str], at: int) -> dict[str, Any]:
    if row is not None and "closed" in row:
        return row
    row = dict(row or {"want": [], "done": {}})
    row["req"], row["at"] = request, min(at, row.get("at", at))
    row["want"] = sorted(set(row["want"]) | set(parts))
    return row


def ledger_report(row: dict[str, Any] | None, part: str, rows: int, found: list[str], at: int) -> dict[str, Any]:
    if row is not None and "closed" in row:
        return row
    row = dict(row or {"req": None, "at": at, "want": [], "done": {}})
    done = dict(row["done"])
    done[part] = max(rows, done.get(part, 0))
    row["done"] = done
    row["want"] = sorted(set(row["want"]) | set(found) | {part})
    return row


def complete(row: dict[str, Any] | None) -> bool:
    """Every part wanted has reported, and the request itself is known."""
    return bool(row) and "closed" not in row and row.get("req") is not None and bool(row["want"]) \
        and all(part in row["done"] for part in row["want"])


def confirmation(row: dict[str, Any], erased_at: int) -> dict[str, Any]:
    """The `erasure-log` message of a complete request."""
    return {"request": row["req"], "erased_at": erased_at, "rows": sum(row["done"].values())}


def closed(row: dict[str, Any]) -> dict[str, Any]:
    return {"closed": row.get("at", 0)}


def overdue(row: dict[str, Any] | None, now: int, deadline_ms: int) -> bool:
    """An open request not confirmed within the deadline (logged, once)."""
    return bool(row) and "closed" not in row and not row.get("late") and now - row.get("at", now) > deadline_ms


def expired_ledger(row: dict[str, Any] | None, now: int, deadline_ms: int) -> bool:
    """A closed marker, or a stray report of a request confirmed before a crash, past twice the deadline."""
    if not row:
        return False
    if "closed" in row:
        return now - row["closed"] > 2 * deadline_ms
    return row.get("req") is None and now - row.get("at", now) > 2 * deadline_ms


# -- links: what erasure needs to find a visitor's other rows ---------------------------------------------
# A row is [expires_at_ms (event time), [values...]] or, for a customer whose orders the order ledger holds,
# [expires_at_ms, [tracking IDs...], [order IDs...]]: newest last, at most MAX_LINKS of each.


def link(row: list[Any] | None, values: list[str], expires_at: int, orders: Sequence[str] = ()) -> list[Any] | None:
    """The row with `values` (and `orders`) added, each once; None when nothing changed (no write)."""
    if row is None:
        row = [0, []]
    known, known_orders = row[1], row[2] if len(row) > 2 else []
    new = [v for v in dict.fromkeys(values) if v not in known]
    new_orders = [o for o in dict.fromkeys(orders) if o not in known_orders]
    if not new and not new_orders and expires_at <= row[0]:
        return None
    updated = [max(row[0], expires_at), (known + new)[-MAX_LINKS:]]
    if known_orders or new_orders:
        updated.append((known_orders + new_orders)[-MAX_LINKS:])
    return updated


def linked_orders(row: list[Any] | None) -> list[str]:
    """The order IDs a customer's link row names (the order ledger's keys)."""
    return list(row[2]) if row and len(row) > 2 else []


def link_expired(row: list[Any] | None, stream_time: int) -> bool:
    return bool(row) and row[0] < stream_time  # type: ignore[index]


def erased_attribution(conversion_id: str) -> dict[str, Any]:
    """The `attributions` message that supersedes a conversion's: same key, no identifier left."""
    return {"conversion_id": conversion_id, "erased": True}
