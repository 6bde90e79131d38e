"""A real Confluent-compatible schema registry on 127.0.0.1, built and started by chipq.

Confluent's own Schema Registry is not published where chipq's machines can
fetch it, so chipq runs Apicurio Registry 3, which serves the Confluent REST
API (the one ``confluent_kafka.schema_registry`` speaks) under
``/apis/ccompat/v7``. Apicurio ships no runnable jar to Maven Central either,
only its Quarkus module: ``infra/registry`` is a small Maven build that turns
that module into a Quarkus fast-jar (``quarkus-run.jar``); its pom says which
pieces the Maven mirror lacks and how they are replaced. The build runs once,
into a cache reused while ``infra/registry`` is unchanged, and needs Maven and
a JDK 17+ (javac); the registry itself needs Java 17+.

Each registry keeps its schemas in an H2 database file in its own folder, so
it keeps them (and their ids) across a stop and start, as Confluent's does.
New versions of a subject must be BACKWARD compatible, Confluent's default.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from chipq_pipelines.errors import ChipqError
from chipq_pipelines.local_kafka import free_port, pid_alive, port_is_free
from chipq_pipelines.paths import REPO_ROOT, ChipqHome

INFRA_DIR = REPO_ROOT / "infra" / "registry"
APICURIO_VERSION = "3.0.9"
CCOMPAT_PATH = "/apis/ccompat/v7"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
DEFAULT_HEAP = "256m"
_STAMP = ".infra-sha256"
_RUN_JAR = "quarkus-run.jar"


class LocalRegistryError(ChipqError, RuntimeError):
    """The local schema registry could not be built, started or stopped."""


def _log(message: str) -> None:
    print(f"[chipq registry] {message}", flush=True)


# ---------------------------------------------------------------- build cache


def _infra_files() -> list[Path]:
    """The files of ``infra/registry`` the build reads (not a stray ``target/``)."""
    return sorted(
        path for path in INFRA_DIR.rglob("*") if path.is_file() and "target" not in path.relative_to(INFRA_DIR).parts
    )


def infra_digest() -> str:
    """sha256 over the names and contents of every file of ``infra/registry``."""
    digest = hashlib.sha256()
    for path in _infra_files():
        digest.update(path.relative_to(INFRA_DIR).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def ensure_registry_app(app_dir: Path, *, quiet: bool = False) -> Path:
    """Build the registry into ``app_dir`` (once per ``infra/registry``); return ``app_dir``.

    ``app_dir`` then holds Quarkus's fast-jar layout, ``quarkus-run.jar`` on top.
    """
    stamp = app_dir / _STAMP
    digest = infra_digest()
    if stamp.exists() and stamp.read_text().strip() == digest and (app_dir / _RUN_JAR).is_file():
        return app_dir
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalRegistryError(
            "Maven (mvn) is not on PATH: install it (apt-get install maven) to build the schema registry"
        )
    if shutil.which("javac") is None:
        raise LocalRegistryError(
            "no Java compiler (javac) on PATH: install a JDK 17+ (apt-get install openjdk-17-jdk-headless) "
            "to build the schema registry"
        )
    if not quiet:
        _log(f"building Apicurio Registry {APICURIO_VERSION} from Maven Central into {app_dir} (first run only)")
    # Build in a copy: the source tree stays clean and a failed build leaves the old app in place.
    work = app_dir.with_name(app_dir.name + ".build")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(INFRA_DIR, work, ignore=shutil.ignore_patterns("target"))
    started = time.monotonic()
    proc = subprocess.run([mvn, "-q", "-B", "-f", str(work / "pom.xml"), "package"], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
        raise LocalRegistryError(
            f"Maven could not build the schema registry (is Maven Central reachable?); build folder {work}:\n{tail}"
        )
    built = work / "app" / "target" / "quarkus-app"
    if not (built / _RUN_JAR).is_file():
        raise LocalRegistryError(f"the Maven build left no {_RUN_JAR} in {built}")
    shutil.rmtree(app_dir, ignore_errors=True)
    app_dir.parent.mkdir(parents=True, exist_ok=True)
    built.rename(app_dir)
    shutil.rmtree(work, ignore_errors=True)
    stamp.write_text(digest + "\n")
    if not quiet:
        _log(f"built in {time.monotonic() - started:.0f} s")
    return app_dir


# ---------------------------------------------------------------- processes


def ccompat_answers(url: str, timeout: float = 2.0) -> bool:
    """True when the Confluent-compatible API at ``url`` lists its subjects."""
    try:
        with urllib.request.urlopen(f"{url}/subjects", timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _is_our_registry(pid: int, instance_dir: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return pid_alive(pid)
    args = [a.decode(errors="replace") for a in cmdline]
    return f"-Dchipq.registry.dir={instance_dir}" in args


@dataclass
class LocalRegistry:
    """One local registry: its port, its folder (database, log, pid) and the built app."""

    port: int
    instance_dir: Path
    app_dir: Path
    heap: str = DEFAULT_HEAP

    @classmethod
    def for_port(cls, port: int | None = None, home: ChipqHome | None = None) -> LocalRegistry:
        """The registry of ``port`` (a free one if None) under ``home``'s registry folder."""
        home = home or ChipqHome.from_env()
        port = port if port is not None else free_port()
        return cls(port=port, instance_dir=home.registry / f"registry-{port}", app_dir=home.registry / "app")

    @property
    def url(self) -> str:
        """Base URL of the Confluent-compatible API (``SchemaRegistryClient``'s ``url``)."""
        return f"http://127.0.0.1:{self.port}{CCOMPAT_PATH}"

    @property
    def log_file(self) -> Path:
        return self.instance_dir / "registry.log"

    @property
    def _pid_file(self) -> Path:
        return self.instance_dir / "registry.pid"

    def pid(self) -> int | None:
        """The pid of this instance's registry if it is running, else None."""
        try:
            pid = int(self._pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if pid_alive(pid) and _is_our_registry(pid, self.instance_dir):
            return pid
        return None

    def is_running(self) -> bool:
        return self.pid() is not None and ccompat_answers(self.url)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no registry log yet)"

    # ------------------------------------------------------------ start

    def _command(self) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise LocalRegistryError("Java is not on PATH: install a JDK 17+ (apt-get install openjdk-17-jdk-headless)")
        return [
            java,
            f"-Xmx{self.heap}",
            "-XX:TieredStopAtLevel=1",  # starts faster; a test registry needs no peak throughput
            f"-Dchipq.registry.dir={self.instance_dir}",
            "-Dquarkus.http.host=127.0.0.1",
            f"-Dquarkus.http.port={self.port}",
            f"-Dapicurio.datasource.url=jdbc:h2:file:{self.instance_dir / 'data' / 'registry'}",
            f"-Djava.io.tmpdir={self.instance_dir / 'tmp'}",
            "-jar",
            str(self.app_dir / _RUN_JAR),
        ]

    def start(self, timeout: float = START_TIMEOUT_S, quiet: bool = False) -> bool:
        """Start the registry and wait until its API answers; False if it already ran."""
        if self.pid() is not None:
            if ccompat_answers(self.url, timeout=10):
                return False
            raise LocalRegistryError(
                f"a registry process (pid {self.pid()}) of {self.instance_dir} runs but does not answer on "
                f"{self.url}; stop it and start again.\n{self.log_tail()}"
            )
        if not port_is_free(self.port):
            raise LocalRegistryError(
                f"port {self.port} on 127.0.0.1 is held by another process: stop it, or pick another port"
            )
        ensure_registry_app(self.app_dir, quiet=quiet)
        (self.instance_dir / "tmp").mkdir(parents=True, exist_ok=True)
        if not quiet:
            _log(f"starting Apicurio Registry {APICURIO_VERSION} on {self.url} (log: {self.log_file})")
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                self._command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.instance_dir,
                start_new_session=True,
            )
        self._pid_file.write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._pid_file.unlink(missing_ok=True)
                raise LocalRegistryError(
                    f"the registry exited with code {proc.returncode} while starting. Last log lines "
                    f"({self.log_file}):\n{self.log_tail()}"
                )
            if ccompat_answers(self.url, timeout=1):
                return True
            time.sleep(0.2)
        self.stop()
        raise LocalRegistryError(
            f"the registry did not answer on {self.url} within {timeout:.0f} s; it was stopped. "
            f"Last log lines ({self.log_file}):\n{self.log_tail()}"
        )

    # ------------------------------------------------------------- stop

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> bool:
        """SIGTERM the registry, SIGKILL it after ``timeout``; False if none ran."""
        pid = self.pid()
        if pid is None:
            self._pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pid_alive(pid):
            self._reap(pid)
            time.sleep(0.2)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            while pid_alive(pid):
                self._reap(pid)
                time.sleep(0.1)
        self._reap(pid)
        self._pid_file.unlink(missing_ok=True)
        return True

    @staticmethod
    def _reap(pid: int) -> None:
        # When this process started the registry, collect its exit status.
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
