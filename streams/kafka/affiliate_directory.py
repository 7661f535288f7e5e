"""Every worker's copy of the compacted `affiliates` topic: a global table, read in full.

A plain aiokafka consumer without a group reads the topic from the start and keeps tailing
it, so each worker knows every affiliate and promo code whatever partitions it owns.
(A Faust GlobalTable over this topic stalled the group's partition assignment here.)
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from aiokafka import AIOKafkaConsumer
from mode import Service

from streams.core.affiliates import parse_affiliate
from streams.core.attribution import Affiliate
from streams.kafka.topics import AFFILIATES_TOPIC

log = logging.getLogger(__name__)


def parse_affiliate_record(raw: bytes | None) -> Affiliate | None:
    """A record of the affiliates topic -> Affiliate; None for a tombstone or a record that is not valid."""
    if not raw:
        return None
    try:
        result = parse_affiliate(orjson.loads(raw))
    except orjson.JSONDecodeError:
        result = "not JSON"
    if isinstance(result, str):
        log.warning("ignoring an affiliate record that is not valid (%s): %r", result, raw[:120])
        return None
    return result


class AffiliateDirectory(Service):
    def __init__(self, bootstrap: str, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.bootstrap = bootstrap
        self.by_id: dict[str, Affiliate] = {}
        self.by_promo_code: dict[str, Affiliate] = {}

    def apply(self, key: bytes | None, raw: bytes | None) -> None:
        affiliate = parse_affiliate_record(raw)
        affiliate_id = key.decode() if key else (affiliate.affiliate_id if affiliate else None)
        if affiliate_id is None:
            return
        if affiliate is None:
            self.by_id.pop(affiliate_id, None)
        else:
            self.by_id[affiliate_id] = affiliate
        self.by_promo_code = {code: a for a in self.by_id.values() for code in a.promo_codes}

    @Service.task
    async def _follow(self) -> None:
        while not self.should_stop:
            consumer = AIOKafkaConsumer(
                AFFILIATES_TOPIC, bootstrap_servers=self.bootstrap, group_id=None,
                auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=200,
            )
            try:
                await consumer.start()
                while not self.should_stop:
                    batches = await consumer.getmany(timeout_ms=500)
                    for records in batches.values():
                        for record in records:
                            self.apply(record.key, record.value)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep following after a broker hiccup
                log.warning("reading %s failed (%s); retrying", AFFILIATES_TOPIC, exc)
                await asyncio.sleep(1.0)
            finally:
                await consumer.stop()
