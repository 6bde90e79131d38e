# services/inspection-svc/app/core/dependencies.py — the guide's dependency.

from fastapi import Request

from app.services.inspection_service import InspectionService


async def get_inspection_service(request: Request) -> InspectionService:
    """Get inspection service from app state."""
    return request.app.state.inspection_service
