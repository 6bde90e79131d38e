"""Re-export: ``from events.utils.serialization import AvroSerializer``."""

from chipq_pipelines.events.serialization import AvroSerializer, decode_event

__all__ = ["AvroSerializer", "decode_event"]
