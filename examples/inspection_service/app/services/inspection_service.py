# services/inspection-svc/app/services/inspection_service.py
# The guide's InspectionService, as written; only `self.db` (the service's own
# database) is filled in, by `app.db.InMemoryInspectionDB`.

from app.db import InMemoryInspectionDB
from events.producers import InspectionEventProducer
from events.utils import KafkaConfig


class InspectionService:
    def __init__(self):
        self.kafka_config = KafkaConfig.from_env()
        self.event_producer = None
        self.db = InMemoryInspectionDB()

    async def initialize(self):
        """Initialize event producer on service startup."""
        self.event_producer = InspectionEventProducer(self.kafka_config)
        await self.event_producer.start()

    async def shutdown(self):
        """Cleanup on service shutdown."""
        if self.event_producer:
            await self.event_producer.stop()

    async def create_inspection(self, inspection_data):
        """Create inspection and publish event."""
        # Create inspection in database
        inspection = await self.db.create_inspection(inspection_data)

        # Publish inspection created event
        await self.event_producer.publish_inspection_created(
            inspection_id=inspection.inspection_id,
            batch_id=str(inspection.lot_id),
            chip_id=inspection.chip_id,
            inspection_type=inspection.inspection_type.value,
            metadata={"station": inspection.station_id, "created_by": str(inspection.inspector_id)},
        )

        return inspection

    async def complete_inspection(self, inspection_id, results):
        """Complete inspection and publish event."""
        # Update inspection in database
        inspection = await self.db.update_inspection(inspection_id, status="completed", results=results)

        # Extract defects
        defects = []
        for defect in results.get("defects", []):
            defects.append(
                {
                    "defect_type": defect["type"],
                    "severity": defect["severity"],
                    "confidence": defect["confidence"],
                    "location": defect["location"],
                }
            )

        # Publish inspection completed event
        await self.event_producer.publish_inspection_completed(
            inspection_id=inspection.inspection_id,
            batch_id=str(inspection.lot_id),
            chip_id=inspection.chip_id,
            inspection_type=inspection.inspection_type.value,
            quality_score=results.get("quality_score"),
            defects=defects,
            metadata={"processing_time_ms": str(results.get("processing_time"))},
        )

        return inspection
