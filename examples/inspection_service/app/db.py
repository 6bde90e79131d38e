"""In-memory stand-in for the inspection service's database (the guide's ``self.db``)."""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from typing import Any


class InspectionType(enum.Enum):
    VISUAL = "visual"
    ELECTRICAL = "electrical"
    XRAY = "x-ray"


@dataclass
class Inspection:
    inspection_id: str
    lot_id: str
    chip_id: str
    inspection_type: InspectionType
    station_id: str
    inspector_id: int
    status: str = "pending"
    results: dict[str, Any] = field(default_factory=dict)


class InMemoryInspectionDB:
    def __init__(self) -> None:
        self.inspections: dict[str, Inspection] = {}
        self._ids = itertools.count(1)

    async def create_inspection(self, data: Any) -> Inspection:
        inspection = Inspection(
            inspection_id=f"INSP-{next(self._ids):06d}",
            lot_id=data.lot_id,
            chip_id=data.chip_id,
            inspection_type=InspectionType(data.inspection_type),
            station_id=data.station_id,
            inspector_id=data.inspector_id,
        )
        self.inspections[inspection.inspection_id] = inspection
        return inspection

    async def update_inspection(self, inspection_id: str, status: str, results: dict[str, Any]) -> Inspection:
        inspection = self.inspections[inspection_id]
        inspection.status = status
        inspection.results = results
        return inspection
