"""How many copies of each partition the engine asks for when TOPIC_REPLICATION is unset."""

from __future__ import annotations

import pytest

from streams.kafka.topics import auto_replication


@pytest.mark.parametrize(("brokers", "replication"), [(0, 1), (1, 1), (2, 2), (3, 3), (4, 3), (9, 3)])
def test_three_copies_or_one_per_broker_on_a_smaller_cluster(brokers: int, replication: int) -> None:
    assert auto_replication(brokers) == replication
