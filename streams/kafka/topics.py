"""Small shared Kafka helpers: topic names, and for the commands that are not the Faust worker a producer.

The collector, simulator, replay and affiliate loader all produce to the input topics;
they share one way to build a producer and to make sure topics exist. `json_arrays` packs
records into fewer messages (the worker's partial snapshots).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from streams.config import Settings
from streams.core.events import INPUT_TOPICS

log = logging.getLogger(__name__)

AFFILIATES_TOPIC = "affiliates"
DLQ_TOPIC = "events.dlq"
ATTRIBUTIONS_TOPIC = "attributions"
METRICS_CHANNEL_TOPIC = "metrics.channel"
METRICS_CAMPAIGN_TOPIC = "metrics.campaign"
METRICS_LTV_TOPIC = "metrics.ltv"
METRICS_MARKOV_TOPIC = "metrics.markov"
SIGNALS_TOPIC = "signals"
ERASURE_REQUESTS_TOPIC = "erasure-requests"
ERASURE_LOG_TOPIC = "erasure-log"
PUBLIC_TOPICS = (*INPUT_TOPICS, DLQ_TOPIC, ATTRIBUTIONS_TOPIC, METRICS_CHANNEL_TOPIC, METRICS_CAMPAIGN_TOPIC,
                 METRICS_LTV_TOPIC, SIGNALS_TOPIC, METRICS_MARKOV_TOPIC, ERASURE_REQUESTS_TOPIC, ERASURE_LOG_TOPIC)
COMPACTED_TOPICS = (AFFILIATES_TOPIC,)
MAX_AUTO_REPLICATION = 3


def json_arrays(items: list[bytes], max_bytes: int) -> list[bytes]:
    """JSON-encoded items packed into as few JSON arrays as keep each within `max_bytes` (an item larger than
    that goes alone), in order: one Kafka message per array instead of one per item."""
    arrays: list[bytes] = []
    chunk: list[bytes] = []
    size = 2
    for item in items:
        if chunk and size + len(item) + 1 > max_bytes:
            arrays.append(b"[" + b",".join(chunk) + b"]")
            chunk, size = [], 2
        chunk.append(item)
        size += len(item) + 1
    if chunk:
        arrays.append(b"[" + b",".join(chunk) + b"]")
    return arrays


def make_producer(bootstrap: str, *, idempotent: bool = False, linger_ms: int = 5) -> AIOKafkaProducer:
    """acks=all with a small linger: batching without losing what was acknowledged."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=linger_ms,
        enable_idempotence=idempotent,
        max_batch_size=256 * 1024,
        compression_type=None,
    )


def auto_replication(brokers: int) -> int:
    """TOPIC_REPLICATION unset: three copies of every partition, or one per broker on a smaller cluster."""
    return max(1, min(MAX_AUTO_REPLICATION, brokers))


async def ensure_topics(
    bootstrap: str, settings: Settings, names: tuple[str, ...] = PUBLIC_TOPICS, compacted: tuple[str, ...] = ()
) -> int:
    """Create the topics that do not exist yet with TOPIC_PARTITIONS partitions (`affiliates` compacted, one
    partition), each partition on TOPIC_REPLICATION brokers (unset: `auto_replication`), and keep `events.dlq`
    for DLQ_RETENTION (an existing one is set to it too: rejected inputs carry raw identifiers). Returns the
    replication."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        replication = settings.topic_replication
        if replication is None:
            replication = auto_replication(len((await admin.describe_cluster())["brokers"]))
        existing = set(await admin.list_topics())
        configs = {name: {"cleanup.policy": "compact"} for name in (*compacted, AFFILIATES_TOPIC)}
        configs[DLQ_TOPIC] = dlq_config(settings)
        wanted = [
            NewTopic(name, 1 if name == AFFILIATES_TOPIC else settings.topic_partitions, replication,
                     topic_configs=configs.get(name, {}))
            for name in dict.fromkeys((*names, *compacted, AFFILIATES_TOPIC)) if name not in existing
        ]
        for topic in wanted:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process made it meanwhile
                await admin.create_topics([topic])
        if wanted:
            log.info("created topics with %d replicas: %s", replication, ", ".join(t.name for t in wanted))
        if DLQ_TOPIC in existing:
            await set_topic_config(admin, DLQ_TOPIC, configs[DLQ_TOPIC])
        return replication
    finally:
        await admin.close()


async def set_topic_config(admin: AIOKafkaAdminClient, topic: str, config: dict[str, str]) -> None:
    """Set these configs of an existing topic; a broker that cannot (the embedded Tansu broker has no
    AlterConfigs) keeps the topic as it is, with a warning."""
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, config)])
    except KafkaError as exc:
        log.warning("could not set %s on topic %s (%s): it keeps its configuration", config, topic, exc)


def dlq_config(settings: Settings) -> dict[str, str]:
    return {"retention.ms": str(settings.dlq_retention_ms)}


async def wait_for_broker(bootstrap: str, timeout_s: float = 30.0) -> None:
    """Block until the broker answers a metadata request, or raise TimeoutError naming it."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    last_error: Exception | None = None
    while asyncio.get_running_loop().time() < deadline:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        try:
            await admin.start()
            await admin.list_topics()
            return
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last_error = exc
            await asyncio.sleep(0.5)
        finally:
            await admin.close()
    raise TimeoutError(f"Kafka at {bootstrap} did not answer within {timeout_s:.0f}s: {last_error}")


async def partition_counts(bootstrap: str, names: tuple[str, ...], timeout_s: float = 15.0) -> dict[str, int]:
    """Partitions per topic, waiting out a fresh topic's metadata (Kafka reports 0 just after creating it)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            counts = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(list(names))}
            if all(counts.get(name) for name in names) or asyncio.get_running_loop().time() > deadline:
                return counts
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def group_members(bootstrap: str, group: str) -> list[str]:
    """The members of a consumer group as `client_id@host`: none when the group is empty or unknown."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    return sorted(
        f"{member['client_id']}@{member['client_host'].lstrip('/')}"
        for response in responses for described in response.to_object()["groups"] for member in described["members"]
    )


async def end_offsets(bootstrap: str, topics: tuple[str, ...]) -> dict[tuple[str, int], int]:
    """The end offset (the next offset to be written) of every partition of these topics."""
    counts = await partition_counts(bootstrap, topics)
    partitions = [TopicPartition(topic, p) for topic, n in counts.items() for p in range(n)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(partitions) if partitions else {}
        return {(tp.topic, tp.partition): offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def read_tails(bootstrap: str, topic: str, per_partition: int, timeout_s: float = 10.0) -> list[bytes]:
    """The values of the last `per_partition` records of each partition of `topic`, in offset order within a
    partition; what was read by `timeout_s` when the broker is slow (Tansu's end offsets can be wrong)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # the cluster's metadata, so that partitions_for_topic knows the topic
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            return []
        consumer.assign(partitions)
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, max(starts[tp], ends[tp] - per_partition))
        values: list[bytes] = []
        deadline = asyncio.get_running_loop().time() + timeout_s
        pending = {tp for tp in partitions if ends[tp] > starts[tp]}
        while pending and asyncio.get_running_loop().time() < deadline:
            for tp, records in (await consumer.getmany(*pending, timeout_ms=200)).items():
                values += [record.value for record in records if record.value is not None]
                if records and records[-1].offset + 1 >= ends[tp]:
                    pending.discard(tp)
        return values
    finally:
        await consumer.stop()
