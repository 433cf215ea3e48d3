"""Apache Kafka for the local stack: jars resolved with Maven, one KRaft broker+controller.

The release's `kafka_2.13` artifact plus a log4j binding is the classpath the release
tarball's `libs/` holds; `kafka.tools.StorageTool format --standalone` and `kafka.Kafka` are
what its scripts run.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

from shared.stack.proc import StackError, spawn

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


def _properties(data_dir: Path, port: int, controller_port: int) -> str:
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        f"log.dirs={data_dir}",
        "num.partitions=6",
        "auto.create.topics.enable=false",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=12",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        # A single developer broker: rebalances should not wait for members that never come.
        "group.initial.rebalance.delay.ms=0",
        "log.retention.hours=168",
        "",
    ])


def start(home: Path, cache_dir: Path, port: int, controller_port: int) -> int:
    """Format storage on first start, then launch the broker; returns its pid."""
    java = java_binary()
    libs = resolve_jars(cache_dir)
    home.mkdir(parents=True, exist_ok=True)
    data_dir = home / "data"
    config = home / "server.properties"
    config.write_text(_properties(data_dir, port, controller_port))
    (home / "log4j2.yaml").write_text(_LOG4J2)
    classpath = f"{libs}/*"
    if not (data_dir / "meta.properties").exists():
        cluster_id_file = home / "cluster.id"
        if not cluster_id_file.exists():
            cluster_id_file.write_text(_cluster_id())
        result = subprocess.run(
            [java, "-cp", classpath, f"-Dlog4j2.configurationFile={home / 'log4j2.yaml'}",
             "kafka.tools.StorageTool", "format", "--standalone", "--ignore-formatted",
             "-t", cluster_id_file.read_text().strip(), "-c", str(config)],
            capture_output=True, text=True)
        if result.returncode != 0:
            raise StackError(f"formatting Kafka's storage failed:\n{(result.stdout + result.stderr)[-2000:]}")
    heap = os.environ.get("MODELREG_KAFKA_HEAP", "-Xms256m -Xmx768m").split()
    return spawn(
        [java, *heap, "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
         f"-Dlog4j2.configurationFile={home / 'log4j2.yaml'}",
         "-cp", classpath, "kafka.Kafka", str(config)],
        home / "kafka.log")


def _cluster_id() -> str:
    """Kafka's cluster ids are 16 random bytes, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
