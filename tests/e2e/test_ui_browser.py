"""The Dagster UI seen in a real browser: headless Debian Chromium against the webserver on this workspace.

Setup installs Chromium (``scripts/install-chromium.sh``), simulates a small
line into the test's topics and runs the pipeline, then starts
``dagster-webserver`` on ``workspace.yaml``. The test checks through the
GraphQL API and the rendered pages that the asset graph lists the ingest
assets, both marts and their checks, and renders ``report.html``.
Screenshots go to ``test-output/ui-browser/`` in the repo root (gitignored).
A machine where Chromium cannot be installed fails this test; it never skips.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from chipq_pipelines.definitions import build_defs
from chipq_pipelines.local_kafka import free_port
from chipq_pipelines.paths import REPO_ROOT
from chipq_pipelines.report import build_report
from chipq_pipelines.runner import catch_up
from chipq_pipelines.simulate import generate, publish_simulation
from chipq_pipelines.simulate.publish import default_start

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-chromium.sh"
OUTPUT = REPO_ROOT / "test-output" / "ui-browser"
LOCATION = "chipq_pipelines.definitions"  # workspace.yaml loads this module; Dagster names the location after it
INGEST_ASSETS = {"raw/inspection_events", "raw/quality_events"}
MARTS = {"marts/defect_rates", "marts/lot_quality_scores"}
TOPICS = {"kafka/inspection_events", "kafka/quality_events"}
#: The loop the lineage must show: topic → raw → marts → alerts → topic (child: its parents).
LINEAGE = {
    "raw/inspection_events": {"kafka/inspection_events"},
    "raw/quality_events": {"kafka/quality_events"},
    "marts/defect_rates": {"raw/inspection_events"},
    "marts/lot_quality_scores": {"raw/inspection_events"},
    "ops/alert_outbox": {"marts/defect_rates", "marts/lot_quality_scores"},
    "ops/threshold_violation_events": {"ops/alert_outbox"},
    "kafka/quality_events": {"ops/threshold_violation_events"},
}
STARTUP_TIMEOUT_S = 90

ASSETS_QUERY = """
{
  assetNodes {
    assetKey { path }
    groupName
    dependencyKeys { path }
    isMaterializable
    assetChecksOrError {
      __typename
      ... on AssetChecks { checks { name executionForLatestMaterialization { status } } }
    }
  }
}
"""


@dataclass
class Webserver:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def graphql(self, query: str, timeout: float = 30.0) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.loads(response.read())
        assert "errors" not in body, body["errors"]
        return body["data"]


@pytest.fixture(scope="module")
def chromium() -> Path:
    """Debian's Chromium, installed by the repo's script when missing (a fresh machine)."""
    result = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=600)
    if result.returncode != 0 or not CHROMIUM.exists():
        pytest.fail(f"Chromium is needed and could not be installed:\n{result.stdout}\n{result.stderr}")
    return CHROMIUM


def browse(
    chromium: Path, url: str, profile: Path, screenshot: Path, height: int = 1000, budget_ms: int = 15_000
) -> str:
    """Load ``url`` in headless Chromium, save a screenshot and return the page's visible text.

    ``budget_ms`` of virtual time lets the UI's JavaScript fetch and render before the capture.
    """
    started = time.monotonic()
    args = [
        str(chromium),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size=1600,{height}",
        f"--virtual-time-budget={budget_ms}",
        f"--screenshot={screenshot}",
        "--dump-dom",
        url,
    ]
    result = subprocess.run(args, capture_output=True, timeout=90)
    stderr = result.stderr.decode(errors="replace")[-2000:]
    assert result.returncode == 0, f"chromium failed on {url}: {stderr}"
    assert screenshot.exists() and screenshot.stat().st_size > 10_000, f"no screenshot of {url}: {stderr}"
    print(f"{url} ({time.monotonic() - started:.1f} s): {screenshot}")
    return visible_text(result.stdout.decode(errors="replace"))


def visible_text(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", dom).split())


@pytest.fixture
def webserver(pipeline_env, tmp_path: Path) -> Iterator[Webserver]:
    """A small pipeline state, then ``dagster-webserver -w workspace.yaml`` on a free port."""
    events, lots = 3_000, 15  # excursions on (≥ 12 lots), too few lots to freeze an SPC baseline
    sim = generate(events, seed=5, lots=lots, start=default_start(events, lots))
    publish_simulation(sim, pipeline_env.kafka_config, topic=pipeline_env.inspection_topic, progress=False)
    started = time.monotonic()
    defs = build_defs()
    catch_up(defs=defs, echo=lambda _line: None)
    print(f"pipeline caught up on {len(sim.records):,} records in {time.monotonic() - started:.1f} s")
    with dg.DagsterInstance.get() as instance:  # what flow_checks_schedule runs every 5 minutes (freshness too)
        assert defs.resolve_job_def("flow_checks").execute_in_process(instance=instance, raise_on_error=False).success
    instance_yaml = Path(os.environ["DAGSTER_HOME"]) / "dagster.yaml"
    with instance_yaml.open("a") as settings:  # this test's instance only: no newsletter pop-up over the screenshots
        settings.write("\nnux:\n  enabled: false\n")

    port = free_port()
    log = tmp_path / "webserver.log"
    command = [str(REPO_ROOT / ".venv" / "bin" / "dagster-webserver"), "-w", "workspace.yaml"]
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [*command, "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO_ROOT,
            env=dict(os.environ),  # pipeline_env's topics, CHIPQ_HOME and DAGSTER_HOME
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Webserver(f"http://127.0.0.1:{port}", process, log)
    try:
        started = time.monotonic()
        _wait_until_serving(server)
        print(f"dagster-webserver serving the workspace after {time.monotonic() - started:.1f} s at {server.url}")
        yield server
    finally:
        _stop(process)


def _wait_until_serving(server: Webserver) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"dagster-webserver exited with {server.process.returncode}:\n{server.log.read_text()[-3000:]}")
        try:
            if server.graphql(ASSETS_QUERY, timeout=10)["assetNodes"]:  # the code location has loaded
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    pytest.fail(
        f"dagster-webserver did not serve the workspace in {STARTUP_TIMEOUT_S} s:\n{server.log.read_text()[-3000:]}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGINT to the webserver's process group (it stops its code server), SIGKILL if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):  # also whatever the group still holds (the gRPC code server)
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def test_asset_graph_lists_ingest_marts_and_checks_and_report_renders(
    chromium: Path, webserver: Webserver, pipeline_env, tmp_path: Path
) -> None:
    shutil.rmtree(OUTPUT, ignore_errors=True)  # no screenshot left over from an earlier run
    OUTPUT.mkdir(parents=True)

    # the API behind the asset graph: assets, groups and the marts' checks, as the code defines them
    nodes = {"/".join(n["assetKey"]["path"]): n for n in webserver.graphql(ASSETS_QUERY)["assetNodes"]}
    assert set(nodes) >= INGEST_ASSETS | MARTS | TOPICS, sorted(nodes)
    assert {nodes[key]["groupName"] for key in INGEST_ASSETS} == {"ingest"}
    assert {nodes[key]["groupName"] for key in TOPICS} == {"kafka"}
    assert not any(nodes[key]["isMaterializable"] for key in TOPICS)  # external: Kafka owns them
    for child, parents in LINEAGE.items():
        shown = {"/".join(d["path"]) for d in nodes[child]["dependencyKeys"]}
        assert parents <= shown, f"{child}: the UI's lineage has parents {sorted(shown)}, not {sorted(parents)}"
    defined = build_defs().resolve_asset_graph().asset_check_keys
    for mart in sorted(MARTS):
        shown = {c["name"] for c in nodes[mart]["assetChecksOrError"]["checks"]}
        expected = {c.name for c in defined if c.asset_key.to_user_string() == mart}
        assert shown and shown == expected, f"{mart}: UI shows checks {sorted(shown)}, code defines {sorted(expected)}"
        statuses = {
            c["executionForLatestMaterialization"]["status"] for c in nodes[mart]["assetChecksOrError"]["checks"]
        }
        assert statuses == {"SUCCEEDED"}, f"{mart}: checks after catch-up and the flow checks: {statuses}"

    # the rendered pages, saved as screenshots for the human record
    groups = f"{webserver.url}/locations/{LOCATION}/asset-groups"
    pages = {
        "asset-lineage": f"{webserver.url}/asset-groups",
        "assets-catalog": f"{webserver.url}/assets",
        "group-ingest": f"{groups}/ingest",
        "group-kafka": f"{groups}/kafka",
        # the loop in one picture: everything upstream of the quality topic, back to the inspection topic
        "topic-loop-lineage": (
            f"{webserver.url}/assets/kafka/quality_events?view=lineage&lineageScope=upstream&lineageDepth=6"
        ),
        "group-quality-marts": f"{groups}/quality_marts",
        **{f"{mart.split('/')[1]}-checks": f"{webserver.url}/assets/{mart}?view=checks" for mart in sorted(MARTS)},
    }
    text = {name: browse(chromium, url, tmp_path / "profile", OUTPUT / f"{name}.png") for name, url in pages.items()}

    assert {"ingest", "quality_marts", "kafka"} <= set(text["asset-lineage"].split()), text["asset-lineage"][:2000]
    loop = text["topic-loop-lineage"]
    # (the graph shortens long names: threshold_…_events)
    for name in ("inspection_events", "defect_rates", "lot_quality_scores", "alert_outbox", "threshold_"):
        assert name in loop, f"{name} not drawn upstream of kafka/quality_events: {loop[:2000]}"
    for key in sorted(TOPICS):  # the topics' group graph draws them and their neighbours across groups
        assert key.split("/")[1] in text["group-kafka"], f"{key} not drawn in the kafka group's graph"
    for key in sorted(INGEST_ASSETS | MARTS):
        shown = text["assets-catalog"]
        assert key.replace("/", " / ") in shown, f"{key} not in the rendered asset catalog: {shown[:2000]}"
    for key in sorted(INGEST_ASSETS):
        assert key.split("/")[1] in text["group-ingest"], f"{key} not drawn in the ingest group's graph"
    for mart in sorted(MARTS):
        assert mart.split("/")[1] in text["group-quality-marts"], f"{mart} not drawn in the quality_marts graph"
        checks_tab = text[f"{mart.split('/')[1]}-checks"]
        for check in (c["name"] for c in nodes[mart]["assetChecksOrError"]["checks"]):
            assert check in checks_tab, f"{check} not on the rendered Checks tab of {mart}: {checks_tab[:2000]}"
        checks = len(nodes[mart]["assetChecksOrError"]["checks"])
        passed = f"{checks} / {checks} Passed"
        assert passed in text["group-quality-marts"], f"{mart}'s node in the graph does not show {passed!r}"

    report = build_report(pipeline_env.snapshot, OUTPUT / "report.html")
    shown = browse(chromium, report.as_uri(), tmp_path / "profile", OUTPUT / "report.png", height=3000, budget_ms=2_000)
    for heading in ("Defect Pareto", "Daily defect-rate trends", "Lot-score control chart", "Flagged lots"):
        assert heading in shown, f"{heading!r} not on the rendered report"
