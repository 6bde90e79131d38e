# services/inspection-svc/app/routers/inspections.py — the guide's routes.

from fastapi import APIRouter, Depends

from app.core.dependencies import get_inspection_service
from app.models import InspectionCreate, InspectionResults
from app.services.inspection_service import InspectionService

router = APIRouter(prefix="/inspections", tags=["inspections"])


@router.post("/")
async def create_inspection(data: InspectionCreate, service: InspectionService = Depends(get_inspection_service)):  # noqa: B008
    """Create new inspection with event publishing."""
    inspection = await service.create_inspection(data)
    return inspection


@router.post("/{inspection_id}/complete")
async def complete_inspection(
    inspection_id: str,
    results: InspectionResults,
    service: InspectionService = Depends(get_inspection_service),  # noqa: B008
):
    """Complete inspection with event publishing."""
    inspection = await service.complete_inspection(inspection_id, results)
    return inspection
