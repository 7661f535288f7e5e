"""Two rules the kill -9 tests depend on, checked without a broker (tests/integration/test_reliability.py
checks them end to end):

- after recovery, conversions of a journey partition leave the grace queue in sequence order, also
  when some were recovered from the journeys table and others are read again from the journeys topic
  (their rows were lost with the crash): the partials' conversion mark (`Partial.conversion_seq`)
  skips any conversion whose sequence is not above it, so one released out of order would be lost;
- Faust's producer flush, which runs before every offset commit, returns only when every table change
  written before it has been handed to the Kafka client (streams/kafka/faust_patches.py);
- after a rebalance, a stream partition with no committed offset is read from its beginning again
  (streams/kafka/faust_patches.py).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from streams.core.journeys import SEQ_PER_MESSAGE, GraceQueue, seq_of
from streams.core.watermarks import CAUGHT_UP, NOTHING_READ, SourceWatermarks
from streams.kafka.faust_patches import drain_producer_buffer_on_flush

T = 1_763_800_000_000
P = 0
ALL = {0, 1}


def caught_up_queue() -> GraceQueue:
    sources = SourceWatermarks(stale_after_s=1e9)
    for partition in ALL:
        sources.report(partition, "intake", CAUGHT_UP, now=0.0)
    return GraceQueue(0.0, 30.0, sources)


def test_a_recovered_partition_releases_nothing_until_the_topic_is_read_past_the_recovered_conversions() -> None:
    grace = caught_up_queue()
    for seq in (seq_of(7, 3), seq_of(9, 0)):  # recovered from the table: their rows survived the crash
        grace.add(P, f"t{seq}", seq, T, now=0.0)
    grace.hold(P, 9)
    assert grace.ready(1.0, ALL) == []
    grace.read(P, 8)  # messages before the last recovered one: conversions whose rows were lost come back
    grace.add(P, "lost", seq_of(8, 5), T, now=1.0)
    assert grace.ready(2.0, ALL) == []
    grace.read(P, 9)
    grace.sources.report(P, "intake", CAUGHT_UP, now=2.5)  # a report made after the last of them arrived
    assert [seq for _, _, seq in grace.ready(3.0, ALL)] == [seq_of(7, 3), seq_of(8, 5), seq_of(9, 0)]


def test_the_max_hold_of_a_held_partition_s_conversions_counts_from_when_it_is_read_again() -> None:
    """A conversion queued before a rebalance, whose touchpoints a killed worker had not sent: the partition is
    held through the rebalance and the recovery (nothing is read meanwhile). Once it is read again, the
    conversion waits for a report again, or the max hold from then: not a hold that ran out while nothing
    was being read (it left at once, before the touchpoints read again were absorbed)."""
    grace = GraceQueue(0.5, 30.0, SourceWatermarks(stale_after_s=10.0))
    grace.sources.report(P, "a", T - 1, now=0.0)
    grace.add(P, "conversion", seq_of(4, 0), T, now=0.0)
    grace.hold(P, 4)  # the rebalance, the recovery: 40 s without reading the partition
    assert grace.ready(40.0, ALL) == []
    grace.read(P, 4, now=40.0)
    assert grace.ready(41.0, ALL) == [], "its max hold ran out while the partition was not being read"
    grace.sources.report(P, "a", T, now=42.0)
    assert grace.ready(42.5, ALL) == [(P, "conversion", seq_of(4, 0))]
    grace.add(P, "stuck", seq_of(5, 0), T + 1, now=43.0)  # a source that never gets there: the max hold still ends
    grace.hold(P, 5)
    grace.read(P, 5, now=44.0)
    assert grace.ready(73.0, ALL) == []
    assert grace.ready(74.0, ALL) == [(P, "stuck", seq_of(5, 0))]


def test_a_report_made_before_a_conversion_arrived_does_not_release_it() -> None:
    """A backfill: the intake was caught up a moment ago; a touchpoint and then its conversion (with an older
    ts than that moment) were produced since. The touchpoint may still be unread: only a later report counts."""
    grace = caught_up_queue()  # caught up, reported at 0.0
    grace.add(P, "conversion", 1, T, now=1.0)
    assert grace.ready(5.0, ALL) == []
    grace.sources.report(P, "intake", T + 1, now=5.5)
    assert grace.ready(6.0, ALL) == [(P, "conversion", 1)]


def test_a_hold_on_one_partition_does_not_stop_another() -> None:
    grace = caught_up_queue()
    grace.add(0, "a", 5, T, now=0.0)
    grace.add(1, "b", 6, T, now=0.0)
    grace.hold(0, 3)
    assert grace.ready(1.0, ALL) == [(1, "b", 6)]
    grace.read(0, 3)
    assert grace.ready(1.0, ALL) == [(0, "a", 5)]


def test_a_hold_lifts_at_any_later_message_and_keeps_the_highest_offset() -> None:
    grace = caught_up_queue()
    grace.add(P, "a", seq_of(2, 0), T, now=0.0)
    grace.hold(P, 4)
    grace.hold(P, 2)  # a second recovery (a rebalance) with older conversions does not lower it
    grace.read(P, 3)
    assert grace.ready(1.0, ALL) == []
    grace.read(P, 40)  # the stage resumed past the recovered ones (they were committed long ago)
    assert grace.ready(1.0, ALL) == [(P, "a", seq_of(2, 0))]
    assert SEQ_PER_MESSAGE == 1024  # seq // SEQ_PER_MESSAGE is the offset that `hold` is given


class FakeChannel:
    """Stands in for a topic: each publish takes a while, as a busy client does."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.published: list[Any] = []

    async def publish_message(self, fut: Any, wait: bool = False) -> None:
        await asyncio.sleep(self.delay_s)
        self.published.append(fut)


@pytest.mark.asyncio
async def test_the_producer_flush_returns_only_when_every_buffered_message_is_handed_on() -> None:
    """Faust's own flush gave up after 0.1 s without a message sent, and did not wait for the message being
    sent; the consumer then committed offsets whose table changes were still in the buffer."""
    from faust.transport.producer import ProducerBuffer

    drain_producer_buffer_on_flush()
    buffer = ProducerBuffer()
    buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))  # type: ignore[assignment]
    channel = FakeChannel(delay_s=0.15)  # slower than Faust's 0.1 s patience
    await buffer.start()
    try:
        for n in range(4):
            buffer.put(SimpleNamespace(n=n, message=SimpleNamespace(channel=channel)))  # type: ignore[arg-type]
        await buffer.flush()
        assert [fut.n for fut in channel.published] == [0, 1, 2, 3]
    finally:
        await buffer.stop()


@pytest.mark.asyncio
async def test_after_a_rebalance_a_partition_never_committed_is_read_from_its_beginning() -> None:
    """Faust seeks stream partitions back to their committed offsets after a rebalance, to undo what its
    fetcher read and dropped meanwhile; a partition with no committed offset was left where the fetcher
    had got to, so the events before that were never processed (streams/kafka/faust_patches.py)."""
    from aiokafka import TopicPartition
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    from streams.kafka.faust_patches import seek_uncommitted_partitions_to_beginning

    seek_uncommitted_partitions_to_beginning()
    journeys0, journeys1 = (TopicPartition("attribution-journey-events", p) for p in (0, 1))
    clicks, changelog = TopicPartition("clicks", 0), TopicPartition("attribution-journeys-changelog", 0)
    sought: list[TopicPartition] = []

    class Client:
        async def seek_to_committed(self) -> dict[TopicPartition, int | None]:
            return {journeys0: None, journeys1: 0, clicks: 42, changelog: None}

        async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
            sought.extend(partitions)

    async def call_thread(fun: Any, *args: Any) -> Any:
        return await fun(*args)

    client = Client()
    thread = SimpleNamespace(app=SimpleNamespace(tables=SimpleNamespace(changelog_topics={changelog.topic})),
                             _ensure_consumer=lambda: client, call_thread=call_thread)
    committed = await AIOKafkaConsumerThread.seek_to_committed(thread)  # type: ignore[arg-type]
    assert committed[clicks] == 42
    assert sorted(sought) == [journeys0, journeys1], "a changelog is the recovery's to seek; clicks has an offset"


def test_a_dead_intake_still_holds_conversions_until_its_partitions_are_owned_by_a_live_one() -> None:
    """A worker killed with touchpoints read but not yet sent on: the worker that takes its partitions
    over reads them again, after the session timeout and a rebalance. Until it owns them, the dead
    worker's last watermark (which does not count those touchpoints) must keep holding conversions."""
    sources = SourceWatermarks(stale_after_s=10.0)
    sources.report(P, "a", T + 5_000, now=0.0, owned=["clicks/0", "impressions/0"])
    sources.report(P, "b", T - 1_000, now=0.0, owned=["clicks/1", "impressions/1"])  # b is killed now
    sources.report(P, "a", T + 9_000, now=15.0, owned=["clicks/0", "impressions/0"])  # the rebalance is late
    assert sources.watermark(P, now=15.0) == T - 1_000, "b's partitions are nobody's yet: its mark counts"
    everything = ["clicks/0", "clicks/1", "impressions/0", "impressions/1"]
    sources.report(P, "a", T - 2_000, now=16.0, owned=everything)  # a took them over, reads them again
    assert sources.watermark(P, now=16.0) == T - 2_000
    sources.report(P, "a", T + 9_500, now=17.0, owned=everything)
    assert sources.watermark(P, now=17.0) == T + 9_500, "b is forgotten once its partitions are a's"


def test_an_input_partition_whose_owner_has_not_reported_holds_conversions_until_one_does() -> None:
    """Issue #20: intake b joins the group, takes half of a's partitions in the rebalance and is killed before
    its first report. a reports its own half caught up; b's half stays unread until the session timeout gives
    it back to a. A conversion whose touchpoints are in b's half must wait for a to have read them again:
    released on a's mark alone, it went to `(direct)` (no Markov path at all) or lost touchpoints."""
    everything = ["clicks/0", "clicks/1", "impressions/0", "impressions/1"]
    grace = GraceQueue(0.5, 30.0, SourceWatermarks(stale_after_s=10.0))
    grace.sources.report(P, "a", T - 1_000, now=0.0, owned=everything)
    grace.add(P, "conversion", 1, T, now=1.0)  # its click is on clicks/1, b's from the next rebalance on
    grace.sources.report(P, "a", CAUGHT_UP, now=2.0, owned=["clicks/0", "impressions/0"])  # b never reports
    assert grace.sources.watermark(P, now=2.0) == NOTHING_READ, "clicks/1 and impressions/1 are nobody's yet"
    assert grace.ready(3.0, ALL) == []
    grace.sources.report(P, "a", T - 500, now=12.0, owned=everything)  # a has them back, reads them again
    assert grace.ready(12.5, ALL) == []
    grace.sources.report(P, "a", T + 1, now=13.0, owned=everything)  # past the conversion: its click is in
    assert grace.ready(13.5, ALL) == [(P, "conversion", 1)]


def test_a_journey_partition_s_new_owner_knows_every_input_partition_from_its_first_report() -> None:
    """Churn on the cluster (CI): intake b is killed; the journey partition moves to a worker that never heard
    from b, and reads on from the last commit, past b's last report. Only a reports, owning its own half; b's
    half waits for the session timeout and the next rebalance. Its touchpoints are unread: a conversion must
    wait, which the input topics' partition counts in a's report say. Without them it went out on a's mark
    alone, and leads were credited to the visitor's earlier channel."""
    counts = {"clicks": 2, "impressions": 2}
    grace = GraceQueue(0.5, 30.0, SourceWatermarks(stale_after_s=10.0))
    grace.add(P, "conversion", 1, T, now=0.0)
    grace.sources.report(P, "a", CAUGHT_UP, now=1.0, owned=["clicks/0", "impressions/0"], partitions=counts)
    assert grace.sources.watermark(P, now=1.0) == NOTHING_READ, "clicks/1 and impressions/1 are nobody's yet"
    assert grace.ready(2.0, ALL) == []
    everything = ["clicks/0", "clicks/1", "impressions/0", "impressions/1"]
    grace.sources.report(P, "a", T + 1, now=9.0, owned=everything, partitions=counts)  # a has b's half, read
    assert grace.ready(9.5, ALL) == [(P, "conversion", 1)]


def test_an_input_topic_given_more_partitions_holds_conversions_until_its_new_ones_are_owned() -> None:
    sources = SourceWatermarks(stale_after_s=10.0)
    sources.report(P, "a", T, now=0.0, owned=["clicks/0"], partitions={"clicks": 1})
    assert sources.watermark(P, now=0.0) == T
    sources.report(P, "a", T + 1, now=1.0, owned=["clicks/0"], partitions={"clicks": 2})
    assert sources.watermark(P, now=1.0) == NOTHING_READ


def test_an_intake_that_owns_nothing_claims_nothing() -> None:
    sources = SourceWatermarks(stale_after_s=10.0)
    sources.report(P, "idle", CAUGHT_UP, now=0.0, owned=[])
    assert sources.watermark(P, now=0.0) is None
    sources.report(P, "busy", T, now=0.0, owned=["clicks/0"])
    assert sources.watermark(P, now=0.0) == T
