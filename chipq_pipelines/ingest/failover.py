"""Kafka offset queries that ride out a broker's death in a replicated cluster.

When a broker dies, its partitions get new leaders (and its groups a new
coordinator) only once the controllers fence it: ``broker.session.timeout.ms``
(9 s by default) plus a metadata refresh. A watermark or committed-offset query
sent meanwhile times out or fails, though the same query succeeds seconds
later; one broker of three going down must not fail a run. These helpers retry
in short tries for up to ``FAILOVER_S`` and then raise the last error. Errors
no wait can fix (an unknown topic, refused credentials) are raised at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

#: Longest leader or coordinator change waited out: three default session timeouts.
FAILOVER_S = 30.0
#: One try's timeout: short, so a new leader is asked soon after the metadata names it.
TRY_S = 5.0

_NEVER_BETTER = {
    KafkaError._UNKNOWN_TOPIC,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_PARTITION,
    KafkaError._AUTHENTICATION,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.SASL_AUTHENTICATION_FAILED,
}


T = TypeVar("T")


def _retrying(call: Callable[[float], T], timeout_s: float, on_error: Callable[[KafkaException], None] | None) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call(max(0.5, min(TRY_S, deadline - time.monotonic())))
        except KafkaException as exc:
            if on_error is not None:
                on_error(exc)  # e.g. raise at once when the password was refused
            if exc.args[0].code() in _NEVER_BETTER or time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def watermark_offsets(
    consumer: Consumer,
    topic: str,
    partition: int,
    *,
    timeout_s: float = FAILOVER_S,
    on_error: Callable[[KafkaException], None] | None = None,
) -> tuple[int, int]:
    """(low, high) watermark of one partition, asked of its leader (not cached), through a leader change."""
    low, high = _retrying(
        lambda t: consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=t, cached=False),
        timeout_s,
        on_error,
    )
    return int(low), int(high)


def committed_offsets(
    consumer: Consumer,
    partitions: list[TopicPartition],
    *,
    timeout_s: float = FAILOVER_S,
    on_error: Callable[[KafkaException], None] | None = None,
) -> list[TopicPartition]:
    """The consumer group's committed offsets, through a coordinator that moves or is still loading."""
    return list(_retrying(lambda t: consumer.committed(partitions, timeout=t), timeout_s, on_error))
