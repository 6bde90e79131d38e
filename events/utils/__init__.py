"""Re-export: ``from events.utils import KafkaConfig, KafkaClientManager``."""

from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.context import correlation_context
from chipq_pipelines.events.health import KafkaClientManager
from chipq_pipelines.events.topics import ensure_topics

__all__ = ["KafkaClientManager", "KafkaConfig", "correlation_context", "ensure_topics"]
