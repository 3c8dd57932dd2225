"""hpfeeds: the wire codec (fuzzed) and the plugin against the real broker from PyPI."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(__file__))

from hpfeeds_fixture import Broker, write_auth  # noqa: E402

from honeytrap.attack import Attack, Connection, Download, Payload  # noqa: E402
from honeytrap.config import Config, PluginSpec  # noqa: E402
from honeytrap.errors import PluginError, ProtocolError  # noqa: E402
from honeytrap.outputs import hpfeeds_wire as wire  # noqa: E402
from honeytrap.outputs.hpfeeds import event_payload, followup_payload  # noqa: E402
from honeytrap.plugin import LoadedPlugin, load_plugin  # noqa: E402

PLUGIN_DIR = str(Path(__file__).resolve().parent.parent / "plugins")
WAIT = 60.0  # bound on every wait; a healthy run takes well under a second
EVENTS = "honeytrap.events"
SAMPLES = "mwbinary.honeytrap.sensorunique"


# -- the wire codec ---------------------------------------------------------------------------

def test_publish_frame_decodes_to_the_same_message() -> None:
    frames = wire.publish("sensor", EVENTS, b"{}") + wire.subscribe("sensor", EVENTS)
    decoder = wire.Decoder()
    messages = decoder.feed(frames[:7]) + decoder.feed(frames[7:])
    assert [m.opcode for m in messages] == [wire.OP_PUBLISH, wire.OP_SUBSCRIBE]
    assert wire.read_publish(messages[0].body) == wire.Publish("sensor", EVENTS, b"{}")


def test_oversized_frame_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        wire.Decoder().feed(b"\x7f\xff\xff\xff\x03")


@given(st.lists(st.binary(max_size=64), max_size=8))
def test_decoder_gives_messages_or_protocol_error(chunks: list[bytes]) -> None:
    decoder = wire.Decoder()
    try:
        for chunk in chunks:
            for message in decoder.feed(chunk):
                assert 0 <= message.opcode <= wire.OP_UNSUBSCRIBE
    except ProtocolError:
        pass


@given(st.binary(max_size=600))
def test_body_readers_give_a_result_or_protocol_error(body: bytes) -> None:
    for reader in (wire.read_publish, wire.read_info, wire.read_error):
        try:
            reader(body)
        except ProtocolError:
            pass


# -- messages ---------------------------------------------------------------------------------

def make_attack(n: int, size: int = 20, sample: bytes | None = None) -> Attack:
    attack = Attack(
        Connection("tcp", "198.18.0.2", 80, "198.18.1.2", 40000 + n, Payload(b"A" * size)),
        start_time=1_700_000_000.0 + n,
    )
    if sample is not None:
        attack.add_download(Download("tftp", "198.18.1.9", 69, "x.exe", "tftp://198.18.1.9/x",
                                     Payload(sample)))
    return attack


def test_attack_json_over_the_limit_is_cut_and_marked() -> None:
    attack = make_attack(1, size=600_000)
    data = event_payload(attack, 100_000)
    assert data is not None and len(data) <= 100_000
    doc = json.loads(data)
    assert doc["attack_connection"]["payload"]["truncated"] is True
    assert doc["attack_connection"]["payload"]["length"] == 600_000
    assert doc["attack_connection"]["payload"]["sha512_hash"] == Payload(b"A" * 600_000).sha512


def test_event_names_its_sensor() -> None:
    doc = json.loads(event_payload(make_attack(1), 100_000, "fleet-sensor-7") or b"")
    assert doc["sensor_id"] == "fleet-sensor-7"


# -- against the broker -----------------------------------------------------------------------

@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    auth = str(tmp_path / "auth.json")
    write_auth(auth)
    server = Broker(auth)
    server.start()
    yield server
    server.stop()


def load(broker: Broker, tmp_path: Path, **extra: str) -> LoadedPlugin:
    options = {"host": "127.0.0.1", "port": str(broker.port), "ident": "sensor",
               "secret": "s3cret", "spool_dir": str(tmp_path / "spool"), "retry_max": "1",
               **extra}
    return load_plugin(PluginSpec("hpfeeds", dict(options)), Config(plugin_dir=PLUGIN_DIR))


@pytest.fixture
def plugin(broker: Broker, tmp_path: Path) -> Iterator[Any]:
    loaded = load(broker, tmp_path)
    loaded.instance.after_fork()  # type: ignore[attr-defined]
    yield loaded.instance
    loaded.instance.close()  # type: ignore[attr-defined]


def test_attacks_arrive_as_json_on_the_events_channel(plugin: Any, broker: Broker) -> None:
    attacks = [make_attack(n) for n in range(10)]
    for attack in attacks:
        plugin.savedata(attack)
    assert plugin.output.writer.wait_delivered(10, WAIT)
    assert broker.wait_for(10, WAIT)
    assert broker.ids() == {a.id: 1 for a in attacks}


def test_broker_outage_loses_nothing_and_sends_nothing_twice(
    plugin: Any, broker: Broker
) -> None:
    writer = plugin.output.writer
    before = [make_attack(n) for n in range(10)]
    for attack in before:
        plugin.savedata(attack)
    assert writer.wait_delivered(10, WAIT)
    assert plugin.stats()["spool_depth"] == 0  # the first call lists the (empty) spool
    broker.stop()
    try:
        during = [make_attack(100 + n) for n in range(10)]
        for attack in during:
            plugin.savedata(attack)
        assert writer.wait_until(lambda c: c.spooled >= 10, WAIT)
        # from the running tally (the next listing is a minute away), as the recorder reports it
        assert plugin.stats()["spool_depth"] == 10
    finally:
        broker.start()
    after = [make_attack(200 + n) for n in range(3)]
    for attack in after:
        plugin.savedata(attack)
    assert writer.wait_delivered(23, WAIT)
    assert broker.wait_for(23, WAIT)
    assert broker.ids() == {a.id: 1 for a in before + during + after}
    assert plugin.stats() == {
        "spool_depth": 0, "spool_refused": 0, "spool_rejected": 0,
        "hpfeeds_events_too_big": 0, "hpfeeds_samples_too_big": 0,
    }


def test_spool_left_by_one_instance_is_replayed_by_the_next(
    broker: Broker, tmp_path: Path
) -> None:
    broker.stop()
    try:
        first = load(broker, tmp_path)
        first.instance.after_fork()  # type: ignore[attr-defined]
        attacks = [make_attack(n) for n in range(5)]
        for attack in attacks:
            first.instance.savedata(attack)  # type: ignore[attr-defined]
        first.instance.close()  # type: ignore[attr-defined]
    finally:
        broker.start()
    second = load(broker, tmp_path)
    second.instance.after_fork()  # type: ignore[attr-defined]
    try:
        assert second.instance.output.writer.wait_delivered(5, WAIT)  # type: ignore[attr-defined]
    finally:
        second.instance.close()  # type: ignore[attr-defined]
    assert broker.wait_for(5, WAIT)
    assert broker.ids() == {a.id: 1 for a in attacks}


def test_a_sample_is_published_raw_once(plugin: Any, broker: Broker) -> None:
    for n in range(3):
        plugin.savedata(make_attack(n, sample=b"MZ\x90\x00 sample"))
    assert plugin.output.writer.wait_delivered(4, WAIT)
    assert broker.wait_for(4, WAIT)
    samples = [d for c, d, _ in broker.received if c == SAMPLES]
    assert samples == [hashlib.sha256(b"MZ\x90\x00 sample").hexdigest()]


def test_ident_without_subscribe_right_still_delivers(broker: Broker, tmp_path: Path) -> None:
    """No copy can come back: the sink falls back to TCP-acknowledged delivery, says so, and
    at most the one record in flight at the refusal arrives twice."""
    loaded = load(broker, tmp_path, ident="pubonly")
    instance: Any = loaded.instance
    instance.after_fork()
    attacks = [make_attack(n) for n in range(5)]
    try:
        for attack in attacks:
            instance.savedata(attack)
        assert instance.output.writer.wait_delivered(5, WAIT)
    finally:
        instance.close()
    assert instance.output.sink.confirm is False
    assert broker.wait_for_ids({a.id for a in attacks}, WAIT)
    ids = broker.ids()
    assert set(ids) == {a.id for a in attacks}
    assert sum(ids.values()) <= len(attacks) + 1


def test_unconfirmed_delivery_sends_each_attack_once(broker: Broker, tmp_path: Path) -> None:
    loaded = load(broker, tmp_path, ident="pubonly", confirm="no")
    instance: Any = loaded.instance
    instance.after_fork()
    attacks = [make_attack(n) for n in range(5)]
    try:
        for attack in attacks:
            instance.savedata(attack)
        assert instance.output.writer.wait_delivered(5, WAIT)
    finally:
        instance.close()
    assert broker.wait_for(5, WAIT)
    assert broker.ids() == {a.id: 1 for a in attacks}


def test_wrong_secret_keeps_attacks_in_the_spool(broker: Broker, tmp_path: Path) -> None:
    loaded = load(broker, tmp_path, secret="wrong")
    instance: Any = loaded.instance
    instance.after_fork()
    try:
        instance.savedata(make_attack(1))
        assert instance.output.writer.wait_until(lambda c: c.spooled >= 1, WAIT)
    finally:
        instance.close()
    assert broker.received == []
    assert len(os.listdir(tmp_path / "spool")) == 2  # the record and rejected/


def test_bad_port_fails_at_load(broker: Broker, tmp_path: Path) -> None:
    with pytest.raises(PluginError, match="port"):
        load(broker, tmp_path, port="70000")


def test_a_follow_up_publishes_the_late_sample_and_the_follow_up_record(
    plugin: Any, broker: Broker
) -> None:
    attack = make_attack(1)
    plugin.savedata(attack)
    attack.add_download(Download("http", "198.18.1.9", 80, "x.exe", "http://198.18.1.9/x",
                                 Payload(b"MZ late sample")))
    plugin.followup(attack)
    assert plugin.output.writer.wait_delivered(3, WAIT)
    assert broker.wait_for(3, WAIT)
    assert broker.ids() == {attack.id: 2}  # the attack, then its follow-up
    doc = json.loads(followup_payload(attack, 100_000, "sensor-7") or b"")
    assert (doc["id"], doc["follow_up"], doc["sensor_id"]) == (attack.id, True, "sensor-7")
    assert doc["downloads"][0]["uri"] == "http://198.18.1.9/x"
    samples = [d for c, d, _ in broker.received if c == SAMPLES]
    assert samples == [hashlib.sha256(b"MZ late sample").hexdigest()]
