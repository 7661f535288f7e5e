"""Lifetime value by acquisition channel (CONTRACT.md section 7), one test per rule.

The pure core (`streams.core.ltv`) and the customer stage's bookkeeping (`streams.stages.ltv`) with
an in-memory table: absorbing, sweeping, and rebuilding after a restart.
"""

from __future__ import annotations

import itertools
import random
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from streams.config import MODELS, Settings
from streams.core.attribution import Touchpoint, credits
from streams.core.ltv import (
    CUSTOMERS,
    FIGURES,
    GROSS_PROFIT,
    ORDERS,
    REPEAT_ORDERS,
    REVENUE,
    Customer,
    CustomerOrder,
    Spend,
    absorb,
    acquisition_weights,
    add_sums,
    contribution,
    customer_bytes,
    ltv_message,
)
from streams.kafka.partitioner import partition_of
from streams.serving.prometheus import WorkerMetrics
from streams.stages.ltv import META_PREFIX, ChannelStage, CustomerStage, customer_key, key_partition
from tests.fakes import FakeFence, KeyedTopic, LatestStore

DAY = 86_400_000
RETENTION = 400 * DAY
T0 = 1_763_800_000_000


def order(event_id: str, ts: int, revenue: float, credit: list[list[Any]], margin: float = 1.0) -> CustomerOrder:
    return CustomerOrder.from_record(
        {"event_id": event_id, "ts": ts, "revenue": revenue, "gross_profit": revenue * margin, "credits": credit}
    )


def run(orders: list[CustomerOrder], retention: int = RETENTION) -> tuple[Customer | None, dict[str, list[float]]]:
    customer, sums = None, {}
    for o in orders:
        result = absorb(customer, o, retention)
        if result.customer is not None:
            customer = result.customer
        add_sums(sums, result.delta)
    return customer, sums


def rounded(sums: dict[str, list[float]]) -> dict[str, list[float]]:
    out = {ch: [round(v, 9) + 0.0 for v in figures] for ch, figures in sums.items()}
    return {ch: figures for ch, figures in out.items() if any(figures)}


# --- the message: clv, cac, ltv_cac ----------------------------------------------------------------------


def test_clv_cac_and_ltv_cac_follow_their_definitions() -> None:
    message = ltv_message("google_ads", [41.5, 63.0, 21.5, 5210.0, 2084.0], 1900.0)
    assert message["clv"] == pytest.approx(5210.0 / 41.5)
    assert message["cac"] == pytest.approx(1900.0 / 41.5)
    assert message["ltv_cac"] == pytest.approx((5210.0 / 41.5) / (1900.0 / 41.5))
    assert set(message) == {"channel", *FIGURES, "spend", "clv", "cac", "ltv_cac"}


def test_zero_denominators_give_null() -> None:
    no_customers = ltv_message("facebook", [0.0, 0.0, 0.0, 0.0, 0.0], 500.0)
    assert (no_customers["clv"], no_customers["cac"], no_customers["ltv_cac"]) == (None, None, None)
    no_spend = ltv_message("email", [2.0, 3.0, 1.0, 300.0, 120.0], 0.0)
    assert no_spend["clv"] == 150.0
    assert (no_spend["cac"], no_spend["ltv_cac"]) == (0.0, None)


def test_float_dust_from_moving_customers_between_channels_is_not_a_customer() -> None:
    message = ltv_message("tiktok", [1e-17, 0.0, -1e-17, 2e-14, 0.0], 0.0)
    assert message["customers"] == 0.0 and message["clv"] is None
    assert message["repeat_orders"] == 0.0 and str(message["repeat_orders"]) == "0.0"


# --- acquisition ----------------------------------------------------------------------------------------


def journey() -> list[Touchpoint]:
    return [
        Touchpoint(T0 - 5 * DAY, "i", "facebook", "retarget", None, "i1"),
        Touchpoint(T0 - 3 * DAY, "c", "google_ads", "brand", None, "c1"),
        Touchpoint(T0 - 2 * DAY, "c", "google_ads", "generic", None, "c2"),
        Touchpoint(T0 - 1 * DAY, "c", "tiktok", "ugc", None, "c3"),
    ]


@pytest.mark.parametrize("model", MODELS)
def test_a_customer_is_acquired_by_the_credits_of_their_first_order_under_every_model(model: str) -> None:
    chosen = credits(model, journey(), T0, 7 * DAY)  # type: ignore[arg-type]
    record_credits = [[c.channel, c.weight] for c in chosen]  # as the journeys stage sends them
    expected: dict[str, float] = {}
    for c in chosen:
        expected[c.channel] = expected.get(c.channel, 0.0) + c.weight

    _, sums = run([order("o1", T0, 100.0, record_credits, margin=0.4)])

    assert {ch: f[CUSTOMERS] for ch, f in sums.items()} == pytest.approx(expected)
    assert sum(f[CUSTOMERS] for f in sums.values()) == pytest.approx(1.0)
    for channel, weight in expected.items():
        assert sums[channel][REVENUE] == pytest.approx(100.0 * weight)
        assert sums[channel][GROSS_PROFIT] == pytest.approx(40.0 * weight)


def test_acquisition_weights_merge_the_campaigns_of_one_channel() -> None:
    assert acquisition_weights([["google_ads", 0.4], ["email", 0.2], ["google_ads", 0.4]]) == (
        ("google_ads", 0.8), ("email", 0.2))


def test_repeat_orders_credit_the_acquiring_channel_not_their_own_touchpoints() -> None:
    _, sums = run([
        order("o1", T0, 100.0, [["google_ads", 1.0]], margin=0.5),
        order("o2", T0 + DAY, 40.0, [["email", 1.0]], margin=0.5),
        order("o3", T0 + 2 * DAY, 60.0, [["(direct)", 1.0]], margin=0.5),
    ])

    assert set(sums) == {"google_ads"}
    assert sums["google_ads"] == [1.0, 3.0, 2.0, 200.0, 100.0]


def test_repeat_orders_split_over_the_acquisition_weights() -> None:
    _, sums = run([
        order("o1", T0, 100.0, [["google_ads", 0.75], ["facebook", 0.25]]),
        order("o2", T0 + DAY, 40.0, [["email", 1.0]]),
    ])

    assert sums["google_ads"] == pytest.approx([0.75, 1.5, 0.75, 105.0, 105.0])
    assert sums["facebook"] == pytest.approx([0.25, 0.5, 0.25, 35.0, 35.0])


def test_the_first_order_is_the_earliest_by_event_time_even_when_it_arrives_last() -> None:
    """Re-acquisition: the late-arriving earlier order moves all of the customer's figures."""
    first = order("o1", T0, 100.0, [["google_ads", 1.0]])
    later = order("o2", T0 + DAY, 40.0, [["email", 1.0]])
    in_order_customer, in_order = run([first, later])

    customer, sums = run([later, first])

    assert rounded(sums) == rounded(in_order) == {"google_ads": [1.0, 2.0, 1.0, 140.0, 140.0]}
    assert customer == in_order_customer._replace(ids=customer.ids)
    assert absorb(None, later, RETENTION)._replace(customer=None).outcome == "new"
    assert absorb(run([later])[0], first, RETENTION).outcome == "reacquired"


def test_ties_in_event_time_are_broken_by_event_id() -> None:
    a = order("a", T0, 10.0, [["google_ads", 1.0]])
    b = order("b", T0, 10.0, [["facebook", 1.0]])

    assert set(rounded(run([b, a])[1])) == {"google_ads"}
    assert rounded(run([a, b])[1]) == rounded(run([b, a])[1])


def test_an_order_absorbed_before_changes_nothing() -> None:
    customer, sums = run([order("o1", T0, 100.0, [["google_ads", 1.0]])])

    again = absorb(customer, order("o1", T0, 100.0, [["google_ads", 1.0]]), RETENTION)

    assert again.outcome == "duplicate" and again.customer is None and again.delta == {}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 30), st.floats(0, 500, allow_nan=False), st.sampled_from(["g", "f", "e", "t"])),
        min_size=1, max_size=8,
    ),
    st.randoms(use_true_random=False),
)
def test_figures_do_not_depend_on_arrival_order_or_repeats(orders_spec: list[Any], rnd: random.Random) -> None:
    orders = [order(f"o{i}", T0 + day * DAY, revenue, [[channel, 1.0]]) for i, (day, revenue, channel) in
              enumerate(orders_spec)]
    first = min(orders, key=lambda o: (o.ts, o.event_id))
    total = sum(o.revenue for o in orders)
    n = len(orders)
    expected = {first.credits[0][0]: [1.0, float(n), n - 1.0, total, total]}

    shuffled = orders + rnd.sample(orders, k=min(3, n))  # with some repeats
    rnd.shuffle(shuffled)
    customer, sums = run(shuffled)

    assert {ch: pytest.approx(f, abs=1e-6) for ch, f in rounded(sums).items()} == expected
    assert rounded(sums) == rounded(contribution(customer))  # the row alone says what it adds


# --- retention -------------------------------------------------------------------------------------------


def test_an_order_after_the_retention_starts_a_new_customer_and_the_old_figures_stay() -> None:
    customer, sums = run([
        order("o1", T0, 100.0, [["google_ads", 1.0]]),
        order("o2", T0 + 10 * DAY, 50.0, [["email", 1.0]]),
        order("o3", T0 + 10 * DAY + RETENTION + 1, 30.0, [["tiktok", 1.0]]),
        order("o4", T0 + 11 * DAY + RETENTION, 20.0, [["email", 1.0]]),
    ])

    assert rounded(sums) == {"google_ads": [1.0, 2.0, 1.0, 150.0, 150.0], "tiktok": [1.0, 2.0, 1.0, 50.0, 50.0]}
    assert customer is not None and customer.first_id == "o3" and customer.past == {
        "google_ads": [1.0, 2.0, 1.0, 150.0, 150.0]}
    assert rounded(contribution(customer)) == rounded(sums)


def test_exactly_at_the_retention_the_customer_is_still_remembered() -> None:
    _, sums = run([order("o1", T0, 100.0, [["google_ads", 1.0]]), order("o2", T0 + RETENTION, 10.0, [["email", 1.0]])])
    assert rounded(sums) == {"google_ads": [1.0, 2.0, 1.0, 110.0, 110.0]}


def test_an_order_of_a_forgotten_life_counts_in_no_lifetime_figure() -> None:
    customer, _ = run([order("o1", T0, 100.0, [["google_ads", 1.0]])])

    before_the_life = absorb(customer, order("o0", T0 - RETENTION - 1, 5.0, [["email", 1.0]]), RETENTION)
    swept = T0 + RETENTION + 1
    behind_the_sweep = absorb(None, order("o9", T0, 5.0, [["email", 1.0]]), RETENTION, retired_before=swept)

    assert before_the_life.outcome == behind_the_sweep.outcome == "late"
    assert before_the_life.delta == behind_the_sweep.delta == {}


def test_a_row_behind_the_retirement_watermark_is_ignored() -> None:
    """Left by a crash between the meta row and its deletion: its figures are already retired."""
    customer, _ = run([order("o1", T0, 100.0, [["google_ads", 1.0]])])

    result = absorb(customer, order("o2", T0 + RETENTION + 5, 10.0, [["email", 1.0]]), RETENTION,
                    retired_before=T0 + RETENTION + 2)

    assert result.outcome == "new" and result.customer is not None and result.customer.past is None
    assert rounded(result.delta) == {"email": [1.0, 1.0, 0.0, 10.0, 10.0]}


def test_customer_state_is_compact() -> None:
    """Measured bytes per remembered customer (key + row + dict slot): see docs/ltv-and-signals.md."""
    customer, _ = run([
        order("7f2a5c1e-8d7b-4c4a-9a51-1e0c5b3d2f10", T0, 100.0, [["google_ads", 1.0]]),
        order("0b7e9d44-1c2f-4e8b-b3aa-6f5d2c1e9a77", T0 + DAY, 40.0, [["email", 1.0]]),
    ])
    row = customer.to_row()

    assert customer_bytes(customer_key(3, "customer-0000012345"), row) < 700
    assert len(orjson.dumps(row)) < 150  # the changelog record's value
    assert Customer.from_row(orjson.loads(orjson.dumps(row))) == customer


# --- cumulative spend from the metric windows -------------------------------------------------------------

W = 60_000
KEEP = 10 * W


def test_a_later_message_for_a_window_replaces_the_earlier() -> None:
    spend = Spend({}).absorb(0, 10.0, False, KEEP).absorb(W, 5.0, False, KEEP).absorb(0, 12.0, True, KEEP)
    assert spend.total == 17.0


def test_old_windows_fold_into_one_number_and_stay_counted() -> None:
    spend = Spend({})
    for i in range(30):
        spend = spend.absorb(i * W, 1.0, i < 25, KEEP)
    assert spend.total == 30.0
    assert len(spend.windows) <= KEEP // W + 1
    stale = spend.absorb(0, 99.0, False, KEEP)  # a non-final re-send of a long-closed window
    assert stale.total == 30.0


def test_a_final_for_an_unseen_old_window_counts_once() -> None:
    spend = Spend({}).absorb(100 * W, 1.0, False, KEEP).absorb(3 * W, 4.0, True, KEEP)
    assert spend.total == 5.0
    assert Spend.from_row(orjson.loads(orjson.dumps(spend.to_row()))) == spend


# --- the customer stage: absorb, sweep, rebuild ------------------------------------------------------------

N = 4


class FakeTable(dict):
    """Just enough of a Faust table: get, set, bulk writes (None deletes) and `.data`."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, Any]] = []  # the changelog, in order

    @property
    def data(self) -> FakeTable:
        return self

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, orjson.loads(orjson.dumps(value)))
        self.log.append((key, orjson.loads(orjson.dumps(value))))

    def put_rows(self, rows: dict[str, Any]) -> None:
        """`KeyPartitionedTable.put_rows`: set each row, None deletes; the changelog in that order."""
        for key, row in rows.items():
            if row is not None:
                self[key] = row
            else:
                self.pop(key, None)
                self.log.append((key, None))

    @classmethod
    def replay(cls, log: list[tuple[str, Any]]) -> FakeTable:
        table = cls()
        for key, value in log:
            if value is None:
                table.pop(key, None)
            else:
                dict.__setitem__(table, key, value)
        return table


def wiring(table: FakeTable, retention: int = RETENTION) -> Any:
    s = Settings(topic_partitions=N, customer_retention_ms=retention)
    return SimpleNamespace(
        settings=s, ltv_customers=table, partition_of=lambda key: partition_of(key, N),
        assigned=lambda topic: set(range(N)), customer_orders=SimpleNamespace(get_topic_name=lambda: "orders"),
    )


def events(records: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """As written to `attribution-customer-orders` before 2026-12-07: one order a message, keyed by customer_id."""
    return [SimpleNamespace(message=SimpleNamespace(key=k.encode(), value=orjson.dumps(v), partition=partition_of(k, N),
                                                    offset=i))
            for i, (k, v) in enumerate(records)]


def customer_keys(table: FakeTable, prefix: str) -> list[str]:
    return [key for key in table if key[0] == "c" and key.split("|", 1)[1].startswith(prefix)]


def customer_records(count: int, day: int = 0) -> list[tuple[str, dict[str, Any]]]:
    channels = ["google_ads", "facebook", "tiktok"]
    return [
        (f"cust-{i}", {"p": 0, "seq": i, "event_id": f"o-{day}-{i}", "ts": T0 + day * DAY + i, "revenue": 10.0 + i,
                       "gross_profit": 4.0 + i, "credits": [[channels[i % 3] if day == 0 else "email", 1.0]]})
        for i in range(count)
    ]


def totals(stage: CustomerStage) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for sums in stage.sums.values():
        add_sums(out, sums)
    return rounded(out)


def test_the_stage_sums_equal_the_figures_of_its_customers_and_survive_a_replay() -> None:
    table = FakeTable()
    stage = CustomerStage(wiring(table))
    batch = events(customer_records(30) + customer_records(30, day=1))
    stage.absorb_batch(batch)
    expected = totals(stage)

    stage.absorb_batch(batch)  # read again after a restart: already absorbed

    assert totals(stage) == expected
    assert expected["google_ads"][CUSTOMERS] == 10 and expected["google_ads"][ORDERS] == 20
    assert expected["google_ads"][REPEAT_ORDERS] == 10
    assert "email" not in expected
    assert stage.outcomes == {"new": 30, "repeat": 30, "duplicate": 60}


def arrays(records: list[tuple[str, dict[str, Any]]], per_message: int) -> list[Any]:
    """As the journeys stage sends orders now: JSON arrays on partition_of(customer_id), no key, `cid` inside."""
    by_partition: dict[int, list[dict[str, Any]]] = {}
    for customer_id, record in records:
        by_partition.setdefault(partition_of(customer_id, N), []).append({"cid": customer_id, **record})
    return [SimpleNamespace(message=SimpleNamespace(key=None, value=orjson.dumps(chunk[i:i + per_message]),
                                                    partition=partition, offset=i))
            for partition, chunk in by_partition.items() for i in range(0, len(chunk), per_message)]


def test_orders_in_arrays_count_as_the_one_order_messages_written_before_them() -> None:
    """Both forms on the topic after an upgrade: the same customers, rows and sums, each order once."""
    records = customer_records(30) + customer_records(30, day=1)
    one_each, in_arrays, mixed = FakeTable(), FakeTable(), FakeTable()
    CustomerStage(wiring(one_each)).absorb_batch(events(records))
    CustomerStage(wiring(in_arrays)).absorb_batch(arrays(records, 7))
    upgraded = CustomerStage(wiring(mixed))
    upgraded.absorb_batch(events(records[:30]) + arrays(records, 4))

    assert dict(in_arrays) == dict(one_each) == dict(mixed) and len(one_each) == 30
    assert upgraded.outcomes == {"new": 30, "repeat": 30, "duplicate": 30}


def test_after_a_restart_the_sums_are_rebuilt_from_the_table() -> None:
    table = FakeTable()
    stage = CustomerStage(wiring(table))
    stage.absorb_batch(events(customer_records(40) + customer_records(40, day=1)))

    restarted = CustomerStage(wiring(FakeTable.replay(table.log)))
    restarted.rebuild(set(range(N)))

    assert totals(restarted) == totals(stage)
    assert {(p, ch) for p, ch in restarted.dirty} == {(p, ch) for p in stage.sums for ch in stage.sums[p]}
    assert all(key_partition(key) == partition_of(key.split("|", 1)[1], N) for key in table)


def test_the_sweep_forgets_customers_after_the_retention_and_keeps_their_figures() -> None:
    table = FakeTable()
    stage = CustomerStage(wiring(table, retention=5 * DAY))
    stage.absorb_batch(events(customer_records(12)))
    stage.absorb_batch(events([(f"late-{i}", r) for i, (_, r) in enumerate(customer_records(16, day=9))]))
    before = totals(stage)

    stage.sweep()

    # forgotten where the partition's newest order is 9 days later; every partition has one here
    assert {partition_of(f"late-{i}", N) for i in range(16)} == set(range(N))
    assert customer_keys(table, "cust-") == []
    assert len(customer_keys(table, "late-")) == 16
    assert totals(stage) == before
    restarted = CustomerStage(wiring(FakeTable.replay(table.log), retention=5 * DAY))
    restarted.rebuild(set(range(N)))
    assert totals(restarted) == before


def test_a_crash_in_the_middle_of_a_sweep_counts_nothing_twice() -> None:
    """The changelog keeps only a prefix of the sweep's writes (meta rows first, then deletions)."""
    table = FakeTable()
    stage = CustomerStage(wiring(table, retention=5 * DAY))
    stage.absorb_batch(events(customer_records(12)))
    stage.absorb_batch(events([(f"late-{i}", r) for i, (_, r) in enumerate(customer_records(4, day=9))]))
    before = totals(stage)
    written = len(table.log)
    stage.sweep()
    sweep_writes = len(table.log) - written
    assert sum(key.startswith(META_PREFIX) for key, _ in table.log[written:]) == 2 and sweep_writes > 4

    for cut in range(sweep_writes + 1):
        restarted = CustomerStage(wiring(FakeTable.replay(table.log[: written + cut]), retention=5 * DAY))
        restarted.rebuild(set(range(N)))
        assert totals(restarted) == before, cut
        restarted.sweep()
        assert totals(restarted) == before, cut
        again = CustomerStage(wiring(FakeTable.replay(list(restarted.table.items())), retention=5 * DAY))
        again.rebuild(set(range(N)))
        assert totals(again) == before, cut


def test_a_rebalance_keeps_only_the_partitions_this_worker_owns() -> None:
    table = FakeTable()
    stage = CustomerStage(wiring(table))
    stage.absorb_batch(events(customer_records(20)))

    stage.rebuild({0, 1})

    assert set(stage.sums) == {0, 1}
    expected = {}
    for key, row in table.items():
        if key_partition(key) in (0, 1):
            add_sums(expected, contribution(Customer.from_row(row)))
    assert totals(stage) == rounded(expected)


def test_the_channel_stage_sums_partials_and_spend_and_skips_what_it_absorbed() -> None:
    table = FakeTable()
    w = SimpleNamespace(settings=Settings(), ltv_channels=table)
    stage = ChannelStage(w)  # type: ignore[arg-type]

    def msg(topic: str, offset: int, value: dict[str, Any]) -> Any:
        return SimpleNamespace(message=SimpleNamespace(topic=topic, partition=0, offset=offset,
                                                       value=orjson.dumps(value)))

    window = {"channel": "google_ads", "window_start": T0, "final": False}
    batch = [
        msg("attribution-ltv-partials", 0, {"p": 0, "c": "google_ads", "f": [2.0, 3.0, 1.0, 300.0, 120.0]}),
        msg("attribution-ltv-partials", 1, {"p": 1, "c": "google_ads", "f": [1.0, 1.0, 0.0, 50.0, 20.0]}),
        msg("attribution-ltv-partials", 2, {"p": 0, "c": "google_ads", "f": [2.0, 4.0, 2.0, 350.0, 140.0]}),
        msg("metrics.channel", 0, {**window, "spend": 30.0}),
        msg("metrics.channel", 1, {**window, "spend": 45.0}),
        msg("metrics.channel", 2, {**window, "window_start": T0 + 60_000, "spend": 15.0}),
    ]
    stage.absorb_batch(batch)
    stage.absorb_batch(batch[:4])  # replayed after a restart

    message = stage.message("google_ads")
    assert message == ltv_message("google_ads", [3.0, 5.0, 2.0, 400.0, 160.0], 60.0)
    assert message["cac"] == 20.0 and message["clv"] == pytest.approx(400 / 3)


async def test_lifetime_figures_go_out_only_through_an_open_fence_and_for_channels_owned_now() -> None:
    """A worker paused past its session wakes with stale sums and channels gone to another worker: its stage one
    sends no snapshot, and its stage two publishes nothing, until its fence opens; then only what it owns."""
    owned = {0, 1}
    registry = CollectorRegistry()
    w = SimpleNamespace(
        settings=Settings(), ltv_channels=FakeTable(), ltv_customers=FakeTable(), metrics=WorkerMetrics(registry, 10),
        partition_of={"google_ads": 0, "email": 1}.__getitem__, assigned=lambda topic: owned,
        ltv_partials_topic=KeyedTopic(), metrics_ltv=KeyedTopic(), store=LatestStore(),
        customer_orders=SimpleNamespace(get_topic_name=lambda: "orders"), fence=FakeFence(is_open=False))
    w.ltv_partials_topic.get_topic_name = lambda: "attribution-ltv-partials"
    customers, channels = CustomerStage(w), ChannelStage(w)  # type: ignore[arg-type]
    customers.sums = {0: {"google_ads": [1.0, 1.0, 1.0, 90.0, 30.0]}}
    customers.dirty = {(0, "google_ads")}
    channels.absorb_batch([
        SimpleNamespace(message=SimpleNamespace(topic="attribution-ltv-partials", partition=p, offset=0,
                                                value=orjson.dumps({"p": p, "c": channel, "f": [1.0, 1.0, 1.0, 90.0,
                                                                                                  30.0]})))
        for p, channel in ((0, "google_ads"), (1, "email"))])
    await customers.send_snapshots()
    await channels.publish()
    assert w.ltv_partials_topic.sent == [] and w.metrics_ltv.sent == []  # the fence is shut
    w.fence.open = True
    owned.discard(1)  # email's partition went to another worker
    await customers.send_snapshots()
    await channels.publish()
    assert [key for key, _ in w.ltv_partials_topic.sent] == [b"google_ads"]
    assert [key for key, _ in w.metrics_ltv.sent] == [b"google_ads"]


def test_bytes_per_customer_in_a_populated_table() -> None:
    table = FakeTable()
    stage = CustomerStage(wiring(table))
    stage.absorb_batch(events(customer_records(200) + customer_records(200, day=1)))
    sizes = [customer_bytes(key, row) for key, row in itertools.islice(table.items(), 200)]
    assert max(sizes) < 700
