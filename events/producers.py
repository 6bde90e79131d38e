"""Re-export: ``from events.producers import InspectionEventProducer, QualityEventProducer``."""

from chipq_pipelines.events.delivery import DeliveryReport
from chipq_pipelines.events.producers import (
    InspectionEventProducer,
    QualityEventProducer,
    SyncInspectionEventProducer,
    SyncQualityEventProducer,
)

__all__ = [
    "DeliveryReport",
    "InspectionEventProducer",
    "QualityEventProducer",
    "SyncInspectionEventProducer",
    "SyncQualityEventProducer",
]
