"""Erasure (CONTRACT.md section 10): requests in, every owner erases its rows, one confirmation out.

    erasure-requests (any key) ── requests agent: schema check (bad: events.dlq), id = partition-offset
        │  "open" to partition_of(id); a "part" per identifier to partition_of(identifier)
        ▼
    attribution-erasures (co-partitioned with the journeys and the customers: a part reaches their owner)
        │  part: links first (a customer's tracking IDs are sent on as parts of their own), then every
        │        eraser registered for the kind deletes its rows (tombstones on their changelogs)
        │  report: to partition_of(id), once the part's deletions are on Kafka
        │  links: the journeys stage's customer -> tracking ID links, kept by the customer's owner
        ▼
    ledger (table `erasures`, by request id): confirmed when every part wanted has reported ──► erasure-log

Nothing is acknowledged before what it caused is on Kafka: a request's offset is committed after its
parts were sent; a part's after its deletions and report were sent. A kill -9 in between reads the
message again, and everything here is idempotent (a part done twice deletes nothing the second time and
is counted once in the ledger), so the confirmation comes after the restart.

Stores join through `Erasers.register(kind, name, erase, find=None)` (`w.erasers`): `erase(identifier)`
deletes the rows this worker owns for the identifier and returns how many (its changelog records handed
to the producer); `find(identifier)` names further parts ((kind, identifier)) before anything is deleted.
A part of kind k is run on the worker that owns partition_of(identifier) of the co-partitioned topics.
A store keyed by another id (an order ledger by order_id) registers a kind of its own ("o") and a finder
on a kind it can be reached from (the customer's links name the order ids, say).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.core.erasure import (
    LINK_CUSTOMER,
    LINK_TRACKING,
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
from streams.kafka.topics import ERASURE_REQUESTS_TOPIC, json_arrays
from streams.stages.intake import dlq_record
from streams.stages.topology import Wiring

log = logging.getLogger(__name__)
BATCH_MAX = 500
BATCH_WITHIN_S = 0.05
CHECK_INTERVAL_S = 10.0
LINK_SWEEP_INTERVAL_S = 300.0  # links are read whole to judge them: not every 10 s
LINK_MESSAGE_BYTES = 256 * 1024

Erase = Callable[[str], Awaitable[int]]
Find = Callable[[str], Awaitable[list[tuple[str, str]]]]


@dataclass
class Erasers:
    """The registry of erasable stores: per kind of identifier, who erases and who finds more parts."""

    erase: dict[str, list[tuple[str, Erase]]] = field(default_factory=dict)
    find: dict[str, list[tuple[str, Find]]] = field(default_factory=dict)

    def register(self, kind: str, name: str, erase: Erase, find: Find | None = None) -> None:
        self.erase.setdefault(kind, []).append((name, erase))
        if find is not None:
            self.find.setdefault(kind, []).append((name, find))


def link_key_partition(partition_of: Callable[[str], int]) -> Callable[[str], int]:
    """A link row lives with its identifier: `t|<tracking_id>` with the journey, `c|<customer_id>` with the
    customer."""
    return lambda key: partition_of(key[2:])


class ErasureStage:
    def __init__(self, w: Wiring) -> None:
        self.w = w
        self.links = w.erasure_links
        self.ledger = w.erasure_ledger
        self.customer_links: dict[int, list[bytes]] = {}  # partition -> [customer_id, tracking_id, expires]
        self.confirming: dict[str, dict[str, Any]] = {}  # request id -> its confirmation, to send
        self.in_flight: set[str] = set()  # request ids whose confirmation is being sent
        w.erasers.register("t", "attributions", self.supersede_attributions)
        w.erasers.register("t", "links", self.erase_tracking_links)
        w.erasers.register("c", "links", self.erase_customer_links, find=self.parts_of_customer)

    # -- links, written by the journeys stage as it attributes -----------------------------------------
    def note_conversion(self, tracking_id: str, conversion_id: str, customer_id: str | None, ts: int,
                        order_id: str | None = None) -> None:
        """A conversion of `tracking_id` has an `attributions` message keyed `conversion_id`; with a customer,
        the customer's owner learns that tracking ID, and the order's ID, the key of its order ledger row (sent by
        `send_links`)."""
        expires = ts + self.w.settings.customer_retention_ms
        key = LINK_TRACKING + tracking_id
        row = link(self.links.row(key), [conversion_id], expires)
        if row is not None:
            self.links.put_rows({key: row})
        if customer_id:
            record = orjson.dumps([customer_id, tracking_id, expires, order_id])
            self.customer_links.setdefault(self.w.partition_of(customer_id), []).append(record)

    async def send_links(self) -> None:
        """The links noted so far on Kafka (the journeys stage awaits this before it forgets the conversions)."""
        await self.links.send_changes()
        for partition in list(self.customer_links):
            for value in json_arrays(self.customer_links[partition], LINK_MESSAGE_BYTES):
                await self.w.erasure_topic.send(value=value, partition=partition)
            del self.customer_links[partition]

    def absorb_customer_links(self, records: list[list[Any]]) -> None:
        rows: dict[str, Any] = {}
        for customer_id, tracking_id, expires, *order in records:  # no order ID in records written before it
            key = LINK_CUSTOMER + customer_id
            before = rows.get(key) or self.links.row(key)
            after = link(before, [tracking_id], expires, [o for o in order if o])
            if after is not None:
                rows[key] = after
        self.links.put_rows(rows)

    # -- the erasers of the links themselves -------------------------------------------------------------
    async def parts_of_customer(self, customer_id: str) -> list[tuple[str, str]]:
        """The customer's tracking IDs, and the order IDs under which the order ledger names the customer."""
        row = self.links.row(LINK_CUSTOMER + customer_id)
        if not row:
            return []
        return [("t", tracking_id) for tracking_id in row[1]] + [("o", order_id) for order_id in linked_orders(row)]

    async def supersede_attributions(self, tracking_id: str) -> int:
        """Every `attributions` message of the visitor gets a successor with its key and no identifier; on
        Kafka before the link naming them is deleted (`erase_tracking_links` runs after)."""
        row = self.links.row(LINK_TRACKING + tracking_id)
        if not row:
            return 0
        for conversion_id in row[1]:
            await self.w.attributions.send(key=conversion_id.encode(), value=orjson.dumps(
                erased_attribution(conversion_id)))
        await self.w.app.producer.flush()
        return len(row[1])

    async def erase_tracking_links(self, tracking_id: str) -> int:
        return self._delete(LINK_TRACKING + tracking_id)

    async def erase_customer_links(self, customer_id: str) -> int:
        return self._delete(LINK_CUSTOMER + customer_id)

    def _delete(self, key: str) -> int:
        if self.links.row(key) is None:
            return 0
        self.links.put_rows({key: None})
        return 1

    # -- requests ---------------------------------------------------------------------------------------
    async def request(self, partition: int, offset: int, raw: bytes | None) -> None:
        """One `erasure-requests` record: its parts out (or the record to events.dlq)."""
        try:
            value = orjson.loads(raw) if raw is not None else None
        except orjson.JSONDecodeError as exc:
            await self.reject(f"not valid JSON: {exc}", partition, offset, raw)
            return
        parsed = parse_request(value)
        if isinstance(parsed, str):
            await self.reject(parsed, partition, offset, raw)
            return
        rid = f"{partition}-{offset}"
        parts = parsed.parts()
        await self.send(rid, {"k": "open", "rid": rid, "req": parsed.as_json(), "at": now_ms(),
                              "want": [part_id(kind, identifier) for kind, identifier in parts]})
        for kind, identifier in parts:
            await self.send(identifier, {"k": "part", "rid": rid, "kind": kind, "id": identifier})
        log.info("erasure request %s: %d part(s) sent", rid, len(parts))

    async def reject(self, error: str, partition: int, offset: int, raw: bytes | None) -> None:
        await self.w.dlq.send(value=dlq_record(error, ERASURE_REQUESTS_TOPIC, partition, offset, None, raw))
        log.warning("erasure request at %d/%d rejected: %s", partition, offset, error)

    async def send(self, routing_key: str, message: dict[str, Any]) -> None:
        await self.w.erasure_topic.send(value=orjson.dumps(message), partition=self.w.partition_of(routing_key))

    # -- parts, reports, links ----------------------------------------------------------------------------
    async def handle(self, message: Any) -> None:
        value = orjson.loads(message)
        if isinstance(value, list):
            self.absorb_customer_links(value)
        elif value["k"] == "part":
            await self.part(value["rid"], value["kind"], value["id"])
        elif value["k"] == "open":
            self.settle(value["rid"], ledger_open(self.ledger.row(value["rid"]), value["req"], value["want"],
                                                  value["at"]))
        elif value["k"] == "report":
            self.settle(value["rid"], ledger_report(self.ledger.row(value["rid"]), value["part"], value["rows"],
                                                    value["found"], now_ms()))

    async def part(self, rid: str, kind: str, identifier: str) -> None:
        """Erase one identifier here: find further parts and send them, then erase, then report."""
        delay = self.w.settings.erasure_delay_ms
        if delay:  # ERASURE_DELAY (tests): a kill -9 between the request read and its confirmation
            log.warning("erasure %s: part %s waits %d ms (ERASURE_DELAY)", rid, part_id(kind, identifier), delay)
            await asyncio.sleep(delay / 1000)
        found: list[tuple[str, str]] = []
        for _, find in self.w.erasers.find.get(kind, []):
            found += await find(identifier)
        found = list(dict.fromkeys(found))
        for other_kind, other in found:
            await self.send(other, {"k": "part", "rid": rid, "kind": other_kind, "id": other})
        await self.w.app.producer.flush()  # the parts found are on Kafka before the rows naming them go
        rows = 0
        for _, erase in self.w.erasers.erase.get(kind, []):
            rows += await erase(identifier)
        for table in self.w.app.tables.values():
            send_changes = getattr(table, "send_changes", None)
            if send_changes is not None and table is not self.ledger:  # the ledger: after `confirm`
                await send_changes()
        await self.w.app.producer.flush()  # the tombstones are on Kafka before the part reports
        await self.send(rid, {"k": "report", "rid": rid, "part": part_id(kind, identifier), "rows": rows,
                              "found": [part_id(k, i) for k, i in found]})

    def settle(self, rid: str, row: dict[str, Any]) -> None:
        self.ledger.put_rows({rid: row})
        if complete(row):
            self.confirming[rid] = confirmation(row, now_ms())

    async def confirm(self) -> None:
        """The confirmations of the batch on `erasure-log`, then the ledger rows closed: a crash between the
        two confirms again after the restart (at least once), never not at all."""
        pending, self.confirming = self.confirming, {}
        self.in_flight |= set(pending)
        for rid, message in pending.items():
            await self.w.erasure_log.send(key=rid.encode(), value=orjson.dumps(message))
            log.info("erasure %s confirmed: %d rows", rid, message["rows"])
        if pending:
            await self.w.app.producer.flush()
            self.ledger.put_rows({rid: closed(self.ledger.row(rid) or {}) for rid in pending})
            await self.ledger.send_changes()
        self.in_flight -= set(pending)

    # -- upkeep ---------------------------------------------------------------------------------------------
    async def check(self) -> None:
        """Log requests past ERASURE_DEADLINE (once each), confirm any complete one whose confirmation a crash
        lost, forget closed ledger rows."""
        now, deadline = now_ms(), self.w.settings.erasure_deadline_ms
        owned = self.w.assigned(self.w.erasure_topic.get_topic_name())
        changes: dict[str, Any] = {}
        for rid, row in list(self.ledger.data.items()):
            if self.ledger.partition_for(rid) not in owned:
                continue
            if expired_ledger(row, now, deadline):
                changes[rid] = None
            elif complete(row) and rid not in self.confirming and rid not in self.in_flight:  # lost to a crash
                self.confirming[rid] = confirmation(row, now)
            elif overdue(row, now, deadline):
                log.error("erasure %s not confirmed within ERASURE_DEADLINE: parts %s of %s reported",
                          rid, sorted(row["done"]), row["want"])
                changes[rid] = {**row, "late": True}
        self.ledger.put_rows(changes)
        await self.ledger.send_changes()
        await self.confirm()

    async def sweep_links(self) -> None:
        """Forget the owned links whose newest conversion is CUSTOMER_RETENTION behind event time."""
        journeys = self.w.state.get("journeys")
        stream_time = getattr(journeys, "stream_time", 0)
        if not stream_time:
            return
        owned = self.w.assigned(self.w.erasure_topic.get_topic_name())
        gone = [key for key, row in list(self.links.data.items())
                if self.links.partition_for(key) in owned and link_expired(row, stream_time)]
        self.links.put_rows(dict.fromkeys(gone))
        await self.links.send_changes()


def now_ms() -> int:
    return int(time.time() * 1000)


def register(w: Wiring) -> None:
    stage = ErasureStage(w)
    w.state["erasure"] = stage

    @w.app.agent(w.erasure_requests, name="erasure-requests")
    async def requests(stream: Any) -> None:
        async for event in stream.events():  # acknowledged when the next is read: after its parts were sent
            await stage.request(event.message.partition, event.message.offset, event.message.value)
            await w.app.producer.flush()

    @w.app.agent(w.erasure_topic, name="erasures")
    async def erasures(stream: Any) -> None:
        async for batch in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
            for event in batch:
                await stage.handle(event.message.value)
            await w.erasure_links.send_changes()
            await stage.confirm()
            await w.erasure_ledger.send_changes()

    @w.app.timer(CHECK_INTERVAL_S, name="erasure-check")
    async def check() -> None:
        await stage.check()

    @w.app.timer(LINK_SWEEP_INTERVAL_S, name="erasure-links-sweep")
    async def sweep_links() -> None:
        await stage.sweep_links()
