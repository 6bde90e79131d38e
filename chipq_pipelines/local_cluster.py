"""A local Kafka cluster: N combined KRaft nodes (broker + controller) on consecutive ports of 127.0.0.1.

``chipq kafka up --brokers 3 --port P`` runs nodes 1, 2 and 3 on ports P, P+1
and P+2, each a ``LocalKafka`` in its own ``kafka/broker-<port>`` folder, so
``chipq kafka status`` and ``down`` see them like any broker. Their
controllers form one dynamic quorum (KIP-853): every node is formatted with
the same cluster id and the same ``--initial-controllers`` list, chosen once
when the cluster is planned and recorded in each node's ``instance.json``. A
node restarted later keeps its data and rejoins. Internal topics get 3
replicas and ``min.insync.replicas=2`` (the platform's topics get the same
from ``topics.yaml``), so acks=all writes go on while one node is down.
"""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass

from chipq_pipelines.local_kafka import (
    START_TIMEOUT_S,
    LocalKafka,
    LocalKafkaError,
    free_port,
    port_is_free,
    stop_brokers,
)
from chipq_pipelines.paths import ChipqHome

#: Heap of each node: three nodes share a laptop (or a test machine) with everything else.
CLUSTER_NODE_HEAP = "512m"
MAX_NODES = 5


def free_consecutive_ports(count: int, attempts: int = 200) -> int:
    """The first of ``count`` consecutive ports of 127.0.0.1 that nothing listens on right now."""
    for _ in range(attempts):
        first = free_port()
        if first + count <= 65535 and all(port_is_free(first + i) for i in range(1, count)):
            return first
    raise LocalKafkaError(f"found no {count} consecutive free ports on 127.0.0.1")


def kafka_uuid() -> str:
    """A random Kafka Uuid as Kafka's tools print it (URL-safe base64 without padding, never starting with '-')."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


@dataclass
class LocalKafkaCluster:
    """The nodes of one local cluster, node 1 first."""

    nodes: list[LocalKafka]

    @property
    def bootstrap(self) -> str:
        """Every node, as KAFKA_BOOTSTRAP_SERVERS wants them."""
        return ",".join(node.bootstrap for node in self.nodes)

    @property
    def size(self) -> int:
        return len(self.nodes)

    @classmethod
    def of(cls, broker: LocalKafka, heap: str = CLUSTER_NODE_HEAP) -> LocalKafkaCluster | None:
        """The cluster ``broker``'s folder was planned for; None for a broker of its own or a new folder."""
        quorum = broker.quorum
        if not quorum:
            return None
        root = broker.instance_dir.parent
        nodes = [
            LocalKafka(
                port=int(str(voter["port"])),
                instance_dir=root / f"broker-{voter['port']}",
                lib_dir=broker.lib_dir,
                heap=heap,
            )
            for voter in quorum
        ]
        # A node folder deleted since (or never written) takes its place in the recorded quorum again.
        cluster_id = str(broker.cluster_id)
        for node in nodes:
            if not node.quorum and not node.is_formatted:
                node.join_cluster(cluster_id, quorum)
            elif node.quorum != quorum:
                raise LocalKafkaError(
                    f"{node.instance_dir} does not belong to the cluster recorded in {broker.instance_dir}; "
                    f"stop it and delete that folder (its data goes with it)"
                )
        return cls(nodes)

    @classmethod
    def plan(
        cls, first_port: int, size: int, home: ChipqHome | None = None, heap: str = CLUSTER_NODE_HEAP
    ) -> LocalKafkaCluster:
        """The cluster of ``size`` nodes on ``first_port`` and the ports after it.

        The one recorded in those folders when there is one; else a new one,
        whose cluster id, controller ports and metadata directory ids are
        chosen now and written to each node's folder (formatted at its first
        start). Raises ``LocalKafkaError`` when a folder holds something else.
        """
        home = home or ChipqHome.from_env()
        if not 2 <= size <= MAX_NODES:
            raise LocalKafkaError(f"a local cluster has 2 to {MAX_NODES} nodes, not {size}")
        ports = list(range(first_port, first_port + size))
        recorded = cls.of(LocalKafka.for_port(first_port, home), heap)
        if recorded is not None:
            if [node.port for node in recorded.nodes] != ports:
                raise LocalKafkaError(
                    f"127.0.0.1:{first_port} is a node of the {recorded.size}-node cluster on "
                    f"{recorded.bootstrap}: start that one with `chipq kafka up --port {recorded.nodes[0].port}`, "
                    f"or pick another --port"
                )
            return recorded
        nodes = [
            LocalKafka(port=port, instance_dir=home.kafka_instance(port), lib_dir=home.kafka_lib, heap=heap)
            for port in ports
        ]
        for node in nodes:
            if node.quorum or node.is_formatted:
                what = "a node of another cluster" if node.quorum else "a broker of its own"
                raise LocalKafkaError(
                    f"{node.instance_dir} holds {what} on port {node.port}, and a {size}-node cluster on "
                    f"--port {first_port} takes ports {ports[0]}-{ports[-1]}: pick another --port, or stop that "
                    f"broker and delete its folder"
                )
        controller_ports: list[int] = []
        while len(controller_ports) < size:
            port = free_port()
            if port not in controller_ports and port not in ports:
                controller_ports.append(port)
        quorum: list[dict[str, object]] = [
            {"node_id": i + 1, "port": port, "controller_port": controller_port, "directory_id": kafka_uuid()}
            for i, (port, controller_port) in enumerate(zip(ports, controller_ports, strict=True))
        ]
        cluster_id = kafka_uuid()
        for node in nodes:
            node.join_cluster(cluster_id, quorum)
        return cls(nodes)

    def start(self, timeout: float = START_TIMEOUT_S, quiet: bool = False) -> list[LocalKafka]:
        """Start the nodes that do not run, wait until every node answers and has registered; returns those started.

        The nodes are launched together (none answers before a majority of
        controllers runs). If one fails, the ones launched here are stopped.
        """
        launched = []
        try:
            for node in self.nodes:
                if node.pid() is None:
                    proc = node.launch(quiet=quiet)
                    if proc is not None:
                        launched.append((node, proc))
            deadline = time.monotonic() + timeout
            procs = {node.port: proc for node, proc in launched}
            for node in self.nodes:
                node.wait_until_answering(procs.get(node.port), max(1.0, deadline - time.monotonic()))
            self.wait_for_brokers(max(1.0, deadline - time.monotonic()))
        except LocalKafkaError:
            stop_brokers([node for node, _ in launched])
            raise
        return [node for node, _ in launched]

    def wait_for_brokers(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until the cluster's metadata lists every node as a broker (registered and unfenced)."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            try:
                seen = len(admin.list_topics(timeout=2).brokers)
            except Exception:
                seen = 0
            if seen >= self.size:
                return
            time.sleep(0.3)
        raise LocalKafkaError(
            f"the cluster on {self.bootstrap} lists {seen} of its {self.size} brokers after {timeout:.0f} s; "
            f"see each node's broker.log under {self.nodes[0].instance_dir.parent}"
        )

    def stop(self) -> list[LocalKafka]:
        """Stop every node (all at once: see ``stop_brokers``); returns those that ran."""
        return stop_brokers(self.nodes)
