"""Apache Kafka for the local stack: jars resolved with Maven, KRaft nodes that are each broker
and controller (one by default; `modelreg stack up --brokers 3` makes a quorum of three).

The release's `kafka_2.13` artifact plus a log4j binding is the classpath the release
tarball's `libs/` holds; `kafka.tools.StorageTool format --standalone` and `kafka.Kafka` are
what its scripts run.

Secured (the default for a new stack): clients connect with SASL SCRAM-SHA-512 over TLS and
the KRaft StandardAuthorizer checks every request against ACLs; the SCRAM credentials are
written into the metadata log when the storage is formatted, so they exist before the broker
first starts. The broker reaches its own controller over SASL PLAIN on 127.0.0.1 (SCRAM
credentials live in the metadata the controller serves, so they cannot authenticate it).
A stack whose storage was formatted before security existed keeps running PLAINTEXT.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from shared.stack.kafka_auth import BROKER, SASL_MECHANISM, SUPER_USERS, KafkaAuth
from shared.stack.proc import StackError, spawn

SECURED_MARKER = "sasl_ssl"  # in the Kafka home: the storage was formatted with SCRAM users

KAFKA_VERSION = os.environ.get("MODELREG_KAFKA_VERSION", "4.4.0")
LOG4J_VERSION = "2.26.1"
MIN_JAVA = 17

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.modelreg.stack</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>{kafka}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: WARN
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.server.KafkaRaftServer
        level: INFO
"""


def java_binary() -> str:
    """The `java` to run, checked for version 17 or newer."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        raise StackError("Java 17 or newer is needed to run Kafka, and no `java` was found: "
                         "install a JDK (apt-get install openjdk-17-jre-headless) or set JAVA_HOME")
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise StackError(f"Kafka {KAFKA_VERSION} needs Java {MIN_JAVA} or newer; {java} is Java "
                         f"{major or 'of unknown version'}: install a newer JDK or set JAVA_HOME")
    return java


def resolve_jars(cache_dir: Path) -> Path:
    """Resolve Kafka's classpath with Maven into the cache (once); returns the libs folder."""
    home = cache_dir / f"kafka-{KAFKA_VERSION}"
    libs = home / "libs"
    done = home / ".resolved"
    if done.exists():
        return libs
    mvn = shutil.which("mvn")
    if not mvn:
        raise StackError("Maven (`mvn`) is needed once to fetch Kafka's jars from Maven Central: "
                         "install it (apt-get install maven)")
    home.mkdir(parents=True, exist_ok=True)
    (home / "pom.xml").write_text(_POM.format(kafka=KAFKA_VERSION, log4j=LOG4J_VERSION))
    if libs.exists():
        shutil.rmtree(libs)
    result = subprocess.run(
        [mvn, "-q", "-B", "-f", str(home / "pom.xml"), "dependency:copy-dependencies",
         f"-DoutputDirectory={libs}", "-DincludeScope=runtime"],
        capture_output=True, text=True)
    if result.returncode != 0 or not any(libs.glob("kafka_2.13-*.jar")):
        raise StackError(f"Maven could not resolve Kafka {KAFKA_VERSION}:\n"
                         f"{(result.stdout + result.stderr)[-2000:]}")
    done.write_text(KAFKA_VERSION)
    return libs


def _listeners(port: int, controller_port: int, auth: KafkaAuth | None) -> list[str]:
    if auth is None:
        return [
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        ]
    return secured_listeners({"SASL_SSL": (f"127.0.0.1:{port}", f"127.0.0.1:{port}")},
                             f"127.0.0.1:{controller_port}", auth)


def secured_listeners(clients: dict[str, tuple[str, str]], controller: str, auth: KafkaAuth) -> list[str]:
    """Broker settings for SASL_SSL client listeners (name -> (bind, advertised) host:port; the
    first also carries the broker's own traffic), SASL PLAIN for the controller, the
    StandardAuthorizer and the super users."""
    broker_password = auth.password(BROKER)
    scram = ("org.apache.kafka.common.security.scram.ScramLoginModule required "
             f'username="{BROKER}" password="{broker_password}";')
    return [
        "listeners=" + ",".join([*(f"{name}://{bind}" for name, (bind, _) in clients.items()),
                                 f"CONTROLLER://{controller}"]),
        "advertised.listeners=" + ",".join(f"{name}://{advertised}" for name, (_, advertised) in clients.items()),
        f"inter.broker.listener.name={next(iter(clients))}",
        "listener.security.protocol.map=" + ",".join(
            [*(f"{name}:SASL_SSL" for name in clients), "CONTROLLER:SASL_PLAINTEXT"]),
        f"sasl.enabled.mechanisms={SASL_MECHANISM}",
        f"sasl.mechanism.inter.broker.protocol={SASL_MECHANISM}",
        *(f"listener.name.{name.lower()}.{SASL_MECHANISM.lower()}.sasl.jaas.config={scram}" for name in clients),
        "sasl.mechanism.controller.protocol=PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
        "listener.name.controller.plain.sasl.jaas.config="
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="{BROKER}" password="{broker_password}" user_{BROKER}="{broker_password}";',
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={auth.broker_keystore}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={auth.ca_file}",
        "ssl.endpoint.identification.algorithm=https",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users=" + ";".join(f"User:{name}" for name in SUPER_USERS),
        "allow.everyone.if.no.acl.found=false",
    ]


@dataclass(frozen=True)
class Node:
    """One KRaft node of the local cluster (broker and controller in one process)."""

    node_id: int
    port: int  # clients' SASL_SSL (or PLAINTEXT) listener
    controller_port: int
    home: Path

    @property
    def controller(self) -> str:
        return f"127.0.0.1:{self.controller_port}"


def cluster_nodes(home: Path, port: int, brokers: int) -> list[Node]:
    """The nodes of a local cluster of `brokers`: client ports `port`, `port`+1, ... and
    controller ports right after them (a single node: `port` and `port`+1, as always); the
    first node lives in `home`, node N in `home`-N beside it."""
    if not 1 <= brokers <= 9:
        raise StackError(f"--brokers {brokers}: the local stack runs 1 to 9 brokers")
    return [Node(i, port + i - 1, port + brokers + i - 1,
                 home if i == 1 else home.with_name(f"{home.name}-{i}"))
            for i in range(1, brokers + 1)]


def replication_of(brokers: int) -> tuple[int, int]:
    """Replication factor and min.insync.replicas of the cluster's own topics (offsets,
    transactions) and its default: 3 and 2 from three brokers on, else every broker."""
    replicas = min(brokers, 3)
    return replicas, 2 if replicas >= 3 else 1


def _properties(node: Node, nodes: list[Node], auth: KafkaAuth | None) -> str:
    return broker_properties(node.home / "data", ",".join(n.controller for n in nodes),
                             _listeners(node.port, node.controller_port, auth),
                             node_id=node.node_id, brokers=len(nodes))


def broker_properties(data_dir: Path | str, controller: str, listeners: list[str], *,
                      node_id: int = 1, brokers: int = 1) -> str:
    """One KRaft node, broker and controller, of a cluster of `brokers` such nodes (whose
    controllers are `controller`, comma-separated)."""
    replicas, min_isr = replication_of(brokers)
    return "\n".join([
        "process.roles=broker,controller",
        f"node.id={node_id}",
        f"controller.quorum.bootstrap.servers={controller}",
        *listeners,
        "controller.listener.names=CONTROLLER",
        f"log.dirs={data_dir}",
        "num.partitions=6",
        "auto.create.topics.enable=false",
        f"default.replication.factor={replicas}",
        f"min.insync.replicas={min_isr}",
        f"offsets.topic.replication.factor={replicas}",
        "offsets.topic.num.partitions=12",
        f"transaction.state.log.replication.factor={replicas}",
        f"transaction.state.log.min.isr={min_isr}",
        f"share.coordinator.state.topic.replication.factor={replicas}",
        f"share.coordinator.state.topic.min.isr={min_isr}",
        # A developer cluster: rebalances should not wait for members that never come.
        "group.initial.rebalance.delay.ms=0",
        "log.retention.hours=168",
        "",
    ])


def formatted(home: Path) -> bool:
    return (home / "data" / "meta.properties").exists()


def secured(home: Path) -> bool:
    """Whether this Kafka runs SASL_SSL: a new one does; one formatted before stays PLAINTEXT."""
    return (home / SECURED_MARKER).exists() or not formatted(home)


def start(home: Path, cache_dir: Path, port: int, controller_port: int, auth: KafkaAuth | None) -> int:
    """A single-node cluster in `home`; returns the broker's pid."""
    node = Node(1, port, controller_port, home)
    return start_node(node, [node], cache_dir, auth)


def start_node(node: Node, nodes: list[Node], cache_dir: Path, auth: KafkaAuth | None) -> int:
    """Format the node's storage on first start (with every principal's SCRAM credentials when
    `auth` is given, and the whole controller quorum when there are several nodes), then
    launch it; returns its pid."""
    java = java_binary()
    libs = resolve_jars(cache_dir)
    home = node.home
    home.mkdir(parents=True, exist_ok=True)
    data_dir = home / "data"
    config = home / "server.properties"
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the broker's password
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(_properties(node, nodes, auth))
    (home / "log4j2.yaml").write_text(_LOG4J2)
    classpath = f"{libs}/*"
    if not (data_dir / "meta.properties").exists():
        # One cluster id for every node, kept by the first.
        cluster_id_file = nodes[0].home / "cluster.id"
        nodes[0].home.mkdir(parents=True, exist_ok=True)
        if not cluster_id_file.exists():
            cluster_id_file.write_text(_cluster_id())
        scram = [] if auth is None else [
            arg for name, password in auth.passwords().items()
            for arg in ("--add-scram", f"{SASL_MECHANISM}=[name={name},password={password}]")]
        quorum = ["--standalone"] if len(nodes) == 1 else [
            "--initial-controllers",
            ",".join(f"{n.node_id}@{n.controller}:{_directory_id(n.home)}" for n in nodes)]
        result = subprocess.run(
            [java, "-cp", classpath, f"-Dlog4j2.configurationFile={home / 'log4j2.yaml'}",
             "kafka.tools.StorageTool", "format", *quorum, "--ignore-formatted",
             "-t", cluster_id_file.read_text().strip(), "-c", str(config), *scram],
            capture_output=True, text=True)
        if result.returncode != 0:
            output = result.stdout + result.stderr
            for password in (auth.passwords().values() if auth else ()):
                output = output.replace(password, "***")
            raise StackError(f"formatting Kafka's storage failed:\n{output[-2000:]}")
        if auth is not None:
            (home / SECURED_MARKER).write_text(f"{SASL_MECHANISM} over TLS; super users: {', '.join(SUPER_USERS)}\n")
    default_heap = "-Xms256m -Xmx768m" if len(nodes) == 1 else "-Xms128m -Xmx512m"
    heap = os.environ.get("MODELREG_KAFKA_HEAP", default_heap).split()
    return spawn(
        [java, *heap, "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
         f"-Dlog4j2.configurationFile={home / 'log4j2.yaml'}",
         "-cp", classpath, "kafka.Kafka", str(config)],
        home / "kafka.log")


def _directory_id(home: Path) -> str:
    """The node's metadata log directory id, chosen once: every node is formatted with the
    whole quorum's ids (--initial-controllers), so they must be known before the first start."""
    path = home / "directory.id"
    home.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(_cluster_id())
    return path.read_text().strip()


def _cluster_id() -> str:
    """Kafka's cluster ids are 16 random bytes, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
