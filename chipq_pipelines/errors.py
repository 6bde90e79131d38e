"""The root of every error chipq raises: ``except ChipqError`` catches them all.

Each error also keeps the built-in class it always had (``ValueError``,
``RuntimeError``), so code that caught those still does.
"""


class ChipqError(Exception):
    """Base of every error raised by ``chipq_pipelines`` (the events library included)."""
