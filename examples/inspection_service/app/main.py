# services/inspection-svc/app/main.py — the guide's lifespan integration.

from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.routers.inspections import router
from app.services.inspection_service import InspectionService


@asynccontextmanager
async def lifespan(app: FastAPI):
    """Handle startup and shutdown events."""
    # Startup
    inspection_service = InspectionService()
    await inspection_service.initialize()
    app.state.inspection_service = inspection_service

    yield

    # Shutdown
    await inspection_service.shutdown()


app = FastAPI(lifespan=lifespan)
app.include_router(router)
