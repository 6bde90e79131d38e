"""One root error class: every error chipq defines is a ChipqError (and keeps its built-in base)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import chipq_pipelines
from chipq_pipelines.errors import ChipqError


def _package_errors() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for module_info in pkgutil.walk_packages(chipq_pipelines.__path__, "chipq_pipelines."):
        if module_info.name.endswith("__main__"):
            continue
        module = importlib.import_module(module_info.name)
        for name, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == module.__name__ and not name.startswith("_"):
                found[f"{module.__name__}.{name}"] = obj
    return found


def test_every_public_error_of_the_package_is_a_chipq_error() -> None:
    errors = _package_errors()
    assert len(errors) >= 15, sorted(errors)  # the events library's, ingest's, the runner's, ...
    assert sorted(name for name, cls in errors.items() if not issubclass(cls, ChipqError)) == []


def test_errors_keep_the_builtin_class_callers_caught_before() -> None:
    from chipq_pipelines.events.errors import ConfigError, EventValidationError
    from chipq_pipelines.ingest.planner import TopicNotReady
    from chipq_pipelines.rules.loader import RulesError

    assert issubclass(ConfigError, ValueError) and issubclass(EventValidationError, ValueError)
    assert issubclass(RulesError, ValueError) and issubclass(TopicNotReady, RuntimeError)
