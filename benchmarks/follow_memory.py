"""Memory of a long-running `chipq catch-up --follow`: RSS and Python objects per pass.

Runs ``runner.follow`` in this process (a worker thread, as the CLI does) on
an isolated pipeline with a small stream, passes back to back (``--interval``
0.05 s), and prints RSS over time plus the Python object types whose count
grew between the first and the last sample. Dagster's bounded caches
(TimeWindow lru_caches of at most 256 entries) fill in the first few hundred
passes; anything that keeps growing after that is a leak.

    .venv/bin/python benchmarks/follow_memory.py --seconds 180
"""

from __future__ import annotations

import argparse
import collections
import gc
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline_bench import kafka_broker, log, make_env


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def object_counts() -> collections.Counter[str]:
    gc.collect()
    return collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180, help="How long to follow [180].")
    parser.add_argument("--events", type=int, default=2000, help="Events published before following [2000].")
    parser.add_argument("--bootstrap", default=None, help="Use this broker instead of starting one.")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="chipq-follow-memory-"))
    with kafka_broker(args.bootstrap, root) as (bootstrap, broker_label):
        env = make_env(bootstrap, root)
        from chipq_pipelines.runner import catch_up, follow

        simulate = ["simulate", "--events", str(args.events), "--no-progress"]
        subprocess.run([sys.executable, "-m", "chipq_pipelines.cli", *simulate], check=True, stdout=subprocess.DEVNULL)
        catch_up(echo=lambda _line: None)
        stop = threading.Event()
        result: dict[str, object] = {}
        worker = threading.Thread(target=lambda: result.update(s=follow(interval=0.05, stop=stop, echo=log)))
        worker.start()
        time.sleep(min(20.0, args.seconds / 5))  # warm-up: imports, first instance, caches start filling
        first_rss, first_objects, started = rss_mb(), object_counts(), time.monotonic()
        samples = [(0.0, first_rss)]
        while time.monotonic() - started < args.seconds:
            time.sleep(max(1.0, args.seconds / 12))
            samples.append((time.monotonic() - started, rss_mb()))
        last_objects = object_counts()
        stop.set()
        worker.join()
    summary = result["s"]
    passes = summary.passes  # type: ignore[attr-defined]
    print(f"\nchipq catch-up --follow memory ({broker_label}; pipeline {env.inspection_topic})")
    print(f"passes: {passes} in {args.seconds + min(20.0, args.seconds / 5):.0f} s (idle, back to back)")
    print("RSS over time: " + ", ".join(f"{t:.0f}s {mb:.1f} MB" for t, mb in samples))
    growth = samples[-1][1] - samples[0][1]
    print(f"RSS growth after warm-up: {growth:+.1f} MB ({growth * 1024 / max(1, passes):.1f} KB per pass overall)")
    grown = (last_objects - first_objects).most_common(8)
    print("Python objects that grew after warm-up: " + (", ".join(f"{n} {k}" for k, n in grown) or "none"))


if __name__ == "__main__":
    main()
