"""A real Apache Kafka broker on 127.0.0.1, fetched and started by chipq itself.

The jars come from Maven Central through ``infra/kafka/pom.xml`` into a cache
that is reused while the pom is unchanged. One combined KRaft node (broker +
controller) runs per port; its storage is formatted once. A node is a broker
of its own (a single-voter quorum) or one node of a local cluster
(``chipq_pipelines.local_cluster``), as its ``instance.json`` records. The
demo, the tests and CI all run against a broker started here (or an external
cluster given in ``KAFKA_BOOTSTRAP_SERVERS``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from chipq_pipelines.errors import ChipqError
from chipq_pipelines.paths import REPO_ROOT, ChipqHome

INFRA_DIR = REPO_ROOT / "infra" / "kafka"
POM = INFRA_DIR / "pom.xml"
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
DEFAULT_HEAP = "768m"


class LocalKafkaError(ChipqError, RuntimeError):
    """The local broker could not be fetched, started or stopped."""


def _log(message: str) -> None:
    print(f"[chipq kafka] {message}", flush=True)


# ---------------------------------------------------------------- jar cache


def ensure_jars(lib_dir: Path, *, quiet: bool = False) -> Path:
    """Resolve Kafka and its logging jars into ``lib_dir`` (once per pom)."""
    stamp = lib_dir / ".pom-sha256"
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == digest and any(lib_dir.glob("kafka_2.13-*.jar")):
        return lib_dir
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalKafkaError("Maven (mvn) is not on PATH: install it (apt-get install maven) to fetch the Kafka jars")
    if not quiet:
        _log(f"fetching Apache Kafka jars from Maven Central into {lib_dir} (first run only)")
    staging = lib_dir.with_name(lib_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        raise LocalKafkaError(f"Maven could not resolve the Kafka jars (is Maven Central reachable?):\n{tail}")
    shutil.rmtree(lib_dir, ignore_errors=True)
    staging.rename(lib_dir)
    stamp.write_text(digest + "\n")
    return lib_dir


def kafka_version(lib_dir: Path) -> str:
    """The Apache Kafka version of the cached jars (from the jar name)."""
    for jar in lib_dir.glob("kafka_2.13-*.jar"):
        match = re.fullmatch(r"kafka_2\.13-(.+)\.jar", jar.name)
        if match:
            return match.group(1)
    raise LocalKafkaError(f"no kafka_2.13 jar in {lib_dir}; run `chipq kafka up` to fetch it")


# ---------------------------------------------------------------- processes


def port_is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:``port``.

    A connect test, not a bind test: right after a broker is killed its old
    connections linger (FIN_WAIT/TIME_WAIT) without anyone listening.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` runs (a zombie does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) is not a running broker.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _is_our_broker(pid: int, instance_dir: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return pid_alive(pid)
    args = [a.decode(errors="replace") for a in cmdline]
    return "kafka.Kafka" in args and any(str(instance_dir) in a for a in args)


def metadata_answers(bootstrap: str, timeout: float = 2.0) -> bool:
    """True when a broker at ``bootstrap`` answers a metadata request."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.connection.setup.timeout.ms": 1000, "log_level": 0})
    try:
        admin.list_topics(timeout=timeout)
    except Exception:
        return False
    return True


@dataclass
class LocalKafka:
    """One local broker: its port, its folder under CHIPQ_HOME and its jars."""

    port: int
    instance_dir: Path
    lib_dir: Path
    heap: str = DEFAULT_HEAP

    @classmethod
    def for_port(cls, port: int = 9092, home: ChipqHome | None = None) -> LocalKafka:
        home = home or ChipqHome.from_env()
        return cls(port=port, instance_dir=home.kafka_instance(port), lib_dir=home.kafka_lib)

    @classmethod
    def all_in(cls, home: ChipqHome | None = None) -> list[LocalKafka]:
        """Every broker of this CHIPQ_HOME (each ``kafka/broker-<port>`` folder), running or not, by port.

        ``chipq kafka status`` and ``down`` without ``--port`` act on all of them,
        whatever ports ``up`` was given (and all nodes of a multi-broker cluster).
        """
        home = home or ChipqHome.from_env()
        brokers = []
        for instance_dir in home.kafka_instance(0).parent.glob("broker-*"):
            port = instance_dir.name.removeprefix("broker-")
            if instance_dir.is_dir() and port.isdigit():
                brokers.append(cls(port=int(port), instance_dir=instance_dir, lib_dir=home.kafka_lib))
        return sorted(brokers, key=lambda broker: broker.port)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def quorum(self) -> list[dict[str, object]]:
        """The nodes of this node's cluster as formatted (node_id, port, controller_port, directory_id);
        empty for a broker of its own."""
        try:
            voters: list[dict[str, object]] = json.loads(self._meta_file.read_text()).get("quorum", [])
        except (OSError, ValueError):
            return []
        return voters

    @property
    def node_id(self) -> int:
        return next((int(str(v["node_id"])) for v in self.quorum if v["port"] == self.port), 1)

    @property
    def cluster_id(self) -> str | None:
        try:
            cluster_id = json.loads(self._meta_file.read_text()).get("cluster_id")
        except (OSError, ValueError):
            return None
        return str(cluster_id) if cluster_id else None

    @property
    def is_formatted(self) -> bool:
        """True once this broker's storage is formatted (it then keeps its cluster id and node id)."""
        return (self.instance_dir / "data" / "meta.properties").exists()

    def join_cluster(self, cluster_id: str, quorum: list[dict[str, object]]) -> None:
        """Record this node's cluster (id and every node's ports) before its storage is first formatted."""
        voter = next(v for v in quorum if v["port"] == self.port)
        self.instance_dir.mkdir(parents=True, exist_ok=True)
        meta = {"controller_port": voter["controller_port"], "cluster_id": cluster_id, "quorum": quorum}
        self._meta_file.write_text(json.dumps(meta))

    @property
    def log_file(self) -> Path:
        return self.instance_dir / "broker.log"

    @property
    def _pid_file(self) -> Path:
        return self.instance_dir / "broker.pid"

    @property
    def _meta_file(self) -> Path:
        return self.instance_dir / "instance.json"

    def pid(self) -> int | None:
        """The pid of this instance's broker if it is running, else None."""
        try:
            pid = int(self._pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if pid_alive(pid) and _is_our_broker(pid, self.instance_dir):
            return pid
        return None

    def is_running(self) -> bool:
        return self.pid() is not None and metadata_answers(self.bootstrap)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no broker log yet)"

    # ------------------------------------------------------------ start

    def _instance_meta(self) -> dict[str, object]:
        """Controller port and cluster id, chosen once when storage is formatted."""
        if self._meta_file.exists():
            meta: dict[str, object] = json.loads(self._meta_file.read_text())
            return meta
        meta = {"controller_port": free_port(), "cluster_id": None}
        self.instance_dir.mkdir(parents=True, exist_ok=True)
        self._meta_file.write_text(json.dumps(meta))
        return meta

    def _java(self, main: str, *args: str, heap: str | None = None) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise LocalKafkaError("Java is not on PATH: install a JDK 17+ (apt-get install openjdk-17-jre-headless)")
        cmd = [java]
        if heap:
            cmd += [f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20"]
        cmd += [
            f"-Dlog4j2.configurationFile={INFRA_DIR / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.instance_dir / 'logs'}",
            "-cp",
            f"{self.lib_dir}/*",
            main,
            *args,
        ]
        return cmd

    def _write_config(self, controller_port: int) -> Path:
        template = (INFRA_DIR / "server.properties.template").read_text()
        quorum = self.quorum
        replication = min(3, max(1, len(quorum)))
        config = template.format(
            port=self.port,
            controller_port=controller_port,
            data_dir=self.instance_dir / "data",
            node_id=self.node_id,
            quorum_bootstrap=",".join(f"127.0.0.1:{v['controller_port']}" for v in quorum)
            or f"127.0.0.1:{controller_port}",
            replication=replication,
            min_isr=max(1, min(2, replication - 1)),
        )
        path = self.instance_dir / "server.properties"
        path.write_text(config)
        return path

    def _format_storage(self, config: Path, meta: dict[str, object]) -> None:
        if self.is_formatted:
            return
        if self.quorum:
            # Every node of a cluster is formatted with the same cluster id and the same initial voters.
            cluster_id = str(meta["cluster_id"])
            voters = ",".join(
                f"{v['node_id']}@127.0.0.1:{v['controller_port']}:{v['directory_id']}" for v in self.quorum
            )
            quorum_args = ["--initial-controllers", voters]
        else:
            cluster_id = subprocess.run(
                self._java("kafka.tools.StorageTool", "random-uuid"), capture_output=True, text=True, check=True
            ).stdout.strip()
            quorum_args = ["--standalone"]
        proc = subprocess.run(
            self._java("kafka.tools.StorageTool", "format", *quorum_args, "-t", cluster_id, "-c", str(config)),
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise LocalKafkaError(f"formatting Kafka storage failed:\n{proc.stdout}{proc.stderr}")
        meta["cluster_id"] = cluster_id
        self._meta_file.write_text(json.dumps(meta))

    def start(self, timeout: float = START_TIMEOUT_S, quiet: bool = False) -> bool:
        """Start the broker and wait until it answers; False if it already ran."""
        proc = self.launch(quiet=quiet)
        if proc is None:
            return False
        self.wait_until_answering(proc, timeout)
        return True

    def launch(self, quiet: bool = False) -> subprocess.Popen[bytes] | None:
        """Start the broker process without waiting for it to answer; None if it already runs.

        The nodes of a cluster are launched together: none answers before a
        majority of the quorum's controllers runs.
        """
        if self.pid() is not None:
            if metadata_answers(self.bootstrap, timeout=10):
                return None
            raise LocalKafkaError(
                f"a broker process (pid {self.pid()}) of {self.instance_dir} runs but does not answer on "
                f"{self.bootstrap}; run `chipq kafka down --port {self.port}` and start again.\n{self.log_tail()}"
            )
        if not port_is_free(self.port):
            raise LocalKafkaError(
                f"port {self.port} on 127.0.0.1 is held by another process: stop it, or pick another port "
                f"with `chipq kafka up --port N` (and KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:N)"
            )
        ensure_jars(self.lib_dir, quiet=quiet)
        self.instance_dir.mkdir(parents=True, exist_ok=True)
        meta = self._instance_meta()
        controller_port = int(str(meta["controller_port"]))
        if not port_is_free(controller_port):
            raise LocalKafkaError(
                f"the controller port {controller_port} of {self.instance_dir} is held by another process; "
                f"free it, or delete {self.instance_dir} to start this broker afresh"
            )
        config = self._write_config(controller_port)
        self._format_storage(config, meta)
        if not quiet:
            _log(f"starting Apache Kafka {kafka_version(self.lib_dir)} on {self.bootstrap} (log: {self.log_file})")
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                self._java("kafka.Kafka", str(config), heap=self.heap),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives `chipq kafka up`; stopped by `down`
            )
        self._pid_file.write_text(f"{proc.pid}\n")
        return proc

    def wait_until_answering(
        self, proc: subprocess.Popen[bytes] | None = None, timeout: float = START_TIMEOUT_S
    ) -> None:
        """Wait until the broker (``proc`` when this process launched it) answers metadata requests;
        stop it and raise if it does not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (proc.poll() is not None) if proc is not None else (self.pid() is None):
                self._pid_file.unlink(missing_ok=True)
                code = proc.returncode if proc is not None else "?"
                raise LocalKafkaError(
                    f"the broker exited with code {code} while starting. Last log lines "
                    f"({self.log_file}):\n{self.log_tail()}\nIf storage is damaged, delete {self.instance_dir}."
                )
            if metadata_answers(self.bootstrap, timeout=1):
                return
            time.sleep(0.3)
        self.stop()
        raise LocalKafkaError(
            f"the broker did not answer on {self.bootstrap} within {timeout:.0f} s; it was stopped. "
            f"Last log lines ({self.log_file}):\n{self.log_tail()}"
        )

    # ------------------------------------------------------------- stop

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> bool:
        """SIGTERM the broker, SIGKILL it after ``timeout``; False if none ran."""
        return bool(stop_brokers([self], timeout))

    def kill(self) -> None:
        """SIGKILL the broker at once (fault injection); storage is kept."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            while pid_alive(pid):
                self._reap(pid)
                time.sleep(0.05)
            self._reap(pid)

    @staticmethod
    def _reap(pid: int) -> None:
        # When this process started the broker, collect its exit status.
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def stop_brokers(brokers: list[LocalKafka], timeout: float = STOP_TIMEOUT_S) -> list[LocalKafka]:
    """SIGTERM every running broker of ``brokers`` at once, SIGKILL those still up after ``timeout``.

    Returns the ones that ran. At once, because the nodes of a cluster shut
    down cleanly only while their controller quorum has a majority: stopped
    one after the other, the last ones would wait for a quorum that is gone.
    """
    running = [(broker, pid) for broker in brokers if (pid := broker.pid()) is not None]
    for broker in brokers:
        if all(broker is not other for other, _ in running):
            broker._pid_file.unlink(missing_ok=True)
    for _, pid in running:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_alive(pid) for _, pid in running):
        for _, pid in running:
            LocalKafka._reap(pid)
        time.sleep(0.2)
    for _, pid in running:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            while pid_alive(pid):
                LocalKafka._reap(pid)
                time.sleep(0.1)
        LocalKafka._reap(pid)
    for broker, _ in running:
        broker._pid_file.unlink(missing_ok=True)
    return [broker for broker, _ in running]
