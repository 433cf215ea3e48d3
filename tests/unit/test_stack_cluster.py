"""The local stack's Kafka cluster layout (`modelreg stack up --brokers N`), without starting it."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.stack.kafka import broker_properties, cluster_nodes, replication_of
from shared.stack.proc import StackError


def _props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_the_default_single_node_keeps_its_ports_and_home() -> None:
    [node] = cluster_nodes(Path("/s/kafka"), 9092, 1)
    assert (node.node_id, node.port, node.controller_port, node.home) == (1, 9092, 9093, Path("/s/kafka"))


def test_three_brokers_take_consecutive_ports_then_their_controllers_each_with_its_own_dir() -> None:
    nodes = cluster_nodes(Path("/s/kafka"), 19092, 3)
    assert [n.port for n in nodes] == [19092, 19093, 19094]
    assert [n.controller_port for n in nodes] == [19095, 19096, 19097]
    assert [n.home for n in nodes] == [Path("/s/kafka"), Path("/s/kafka-2"), Path("/s/kafka-3")]
    assert len({n.node_id for n in nodes}) == 3


@pytest.mark.parametrize("brokers", [0, 10, -1])
def test_an_unreasonable_number_of_brokers_is_refused_by_name(brokers: int) -> None:
    with pytest.raises(StackError, match="--brokers"):
        cluster_nodes(Path("/s/kafka"), 9092, brokers)


def test_replication_is_three_and_two_from_three_brokers_else_every_broker() -> None:
    assert replication_of(1) == (1, 1)
    assert replication_of(2) == (2, 1)
    assert replication_of(3) == (3, 2)
    assert replication_of(5) == (3, 2)


def test_each_node_knows_the_whole_quorum_and_replicates_the_internal_topics() -> None:
    props = _props(broker_properties("/d", "127.0.0.1:19095,127.0.0.1:19096,127.0.0.1:19097", [],
                                     node_id=2, brokers=3))
    assert props["node.id"] == "2"
    assert props["controller.quorum.bootstrap.servers"].count(",") == 2
    assert props["offsets.topic.replication.factor"] == "3"
    assert props["transaction.state.log.min.isr"] == "2"
    assert props["min.insync.replicas"] == "2"
    single = _props(broker_properties("/d", "127.0.0.1:9093", []))
    assert (single["node.id"], single["offsets.topic.replication.factor"],
            single["min.insync.replicas"]) == ("1", "1", "1")


def test_a_state_file_written_by_a_newer_version_still_loads(tmp_path: Path) -> None:
    import json

    from shared.stack.launcher import LocalStack

    (tmp_path / "stack.json").write_text(json.dumps(
        {"ports": {"kafka": 19092}, "s3_pid": 42, "s3_server": "versitygw", "a_field_from_the_future": True}))
    state = LocalStack(tmp_path, cache_dir=tmp_path).state
    assert (state.ports.kafka, state.s3_pid, state.s3_server) == (19092, 42, "versitygw")
