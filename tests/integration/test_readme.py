"""The README's Python example runs as written against the real broker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def test_readme_python_examples_run(kafka_bootstrap: str, tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks, "the README shows the events library in Python"
    ensure_topics(KafkaConfig(bootstrap_servers=kafka_bootstrap))
    for index, block in enumerate(blocks):
        script = tmp_path / f"readme_{index}.py"
        script.write_text(block)
        result = subprocess.run(
            [sys.executable, str(script)],
            env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap},
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert re.search(r"chip-quality\.inspection\.events \d+ \d+", result.stdout), result.stdout
