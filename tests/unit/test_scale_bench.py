"""benchmarks/scale_bench.py runs end to end on tiny histories and ends with the ratio line."""

from __future__ import annotations

import re
import subprocess
import sys

from chipq_pipelines.paths import REPO_ROOT

RATIO_LINE = re.compile(
    r"^scale 80k/20k: publish \d+\.\d\d, land \d+\.\d\d, lot \d+\.\d\d, day \d+\.\d\d, "
    r"alerts \d+\.\d\d, checks \d+\.\d\d$",
)


def test_scale_bench_measures_each_size_and_prints_the_ratios_last() -> None:
    completed = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "scale_bench.py"),
            *("--sizes", "20000", "80000", "--events-per-day", "20000", "--cycles", "2"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.strip().splitlines()
    assert RATIO_LINE.match(lines[-1]), lines[-1]  # every step measured: a failed one would print nan
    assert "FAILED" not in completed.stdout, completed.stdout
    rows = [line for line in lines if re.match(r"^\| (20,000|80,000) \|", line)]
    assert len(rows) == 2, completed.stdout
    # each cycle landed 9,900 new events and recognised the 100 producer retries
    assert completed.stdout.count("9,900 new + 100 duplicates") == 4, completed.stdout
