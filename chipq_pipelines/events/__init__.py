"""chipq's Kafka + Avro events library (no Dagster, no DuckDB).

The integration guide's API lives here; the top-level ``events`` package
re-exports it under the guide's module names.
"""

from chipq_pipelines.events.base_consumer import BaseEventConsumer, ConsumedRecord
from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.consumers import AnalyticsConsumer, NotificationConsumer
from chipq_pipelines.events.context import correlation_context
from chipq_pipelines.events.delivery import DeliveryReport
from chipq_pipelines.events.errors import (
    ConfigError,
    DeserializationError,
    EventsError,
    EventValidationError,
    PublishError,
    SchemaNotFoundError,
    SerializationError,
    TopicNotFoundError,
)
from chipq_pipelines.events.health import KafkaClientManager
from chipq_pipelines.events.producers import (
    InspectionEventProducer,
    QualityEventProducer,
    SyncInspectionEventProducer,
    SyncQualityEventProducer,
)
from chipq_pipelines.events.serialization import AvroSerializer, decode_event
from chipq_pipelines.events.topics import INSPECTION_TOPIC, QUALITY_TOPIC, dlq_topic, ensure_topics

__all__ = [
    "INSPECTION_TOPIC",
    "QUALITY_TOPIC",
    "AnalyticsConsumer",
    "AvroSerializer",
    "BaseEventConsumer",
    "ConfigError",
    "ConsumedRecord",
    "DeliveryReport",
    "DeserializationError",
    "EventValidationError",
    "EventsError",
    "InspectionEventProducer",
    "KafkaClientManager",
    "KafkaConfig",
    "NotificationConsumer",
    "PublishError",
    "QualityEventProducer",
    "SchemaNotFoundError",
    "SerializationError",
    "SyncInspectionEventProducer",
    "SyncQualityEventProducer",
    "TopicNotFoundError",
    "correlation_context",
    "decode_event",
    "dlq_topic",
    "ensure_topics",
]
