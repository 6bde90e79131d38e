"""Re-export: ``from events.consumers import AnalyticsConsumer, NotificationConsumer, BaseEventConsumer``."""

from chipq_pipelines.events.consumers import (
    AnalyticsConsumer,
    BaseEventConsumer,
    ConsumedRecord,
    LotStatistics,
    NotificationConsumer,
)

__all__ = ["AnalyticsConsumer", "BaseEventConsumer", "ConsumedRecord", "LotStatistics", "NotificationConsumer"]
