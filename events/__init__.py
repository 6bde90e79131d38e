"""The integration guide's import paths (``from events.producers import …``).

A thin re-export of ``chipq_pipelines.events``; the code lives there.
"""
