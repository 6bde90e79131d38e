"""Request models the guide's routes use."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class InspectionCreate(BaseModel):
    lot_id: str
    chip_id: str
    inspection_type: str = "visual"
    station_id: str = "ST-1"
    inspector_id: int = 1


class DefectIn(BaseModel):
    type: str
    severity: str
    confidence: float
    location: dict[str, float]


class InspectionResults(BaseModel):
    quality_score: float | None = None
    defects: list[DefectIn] = Field(default_factory=list)
    processing_time: int | None = None

    def get(self, key: str, default: Any = None) -> Any:
        """The guide's service reads results like a dict."""
        value = getattr(self, key, default)
        if key == "defects":
            return [d.model_dump() for d in value]
        return value
