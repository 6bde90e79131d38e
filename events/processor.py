"""Re-export of the event processor service."""

from chipq_pipelines.events.processor import EventProcessorService, run_processor

__all__ = ["EventProcessorService", "run_processor"]
