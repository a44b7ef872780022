"""Home Assistant MQTT discovery from the mqtt sink (opt-in), against a real mosquitto broker: each
camera becomes a device with an anomaly binary sensor and score/category sensors whose topics carry
what the sink publishes, retained, and announced again to a broker that lost them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_sinks import T0, _stopping, make_events, mqtt_sink


@pytest.mark.system
def test_each_camera_is_announced_with_three_entities_and_states(mqtt_broker, tmp_path: Path) -> None:
    from tests.fixtures.mqtt import MqttCollector

    s = mqtt_sink(mqtt_broker.port, tmp_path, home_assistant=True, score_interval=0.0)
    with MqttCollector(mqtt_broker.port, ["homeassistant/#", "dsanet/#"]) as sub, _stopping(s):
        s.start()
        assert sub.wait_for(1, topic="dsanet/available")
        s.publish_score("Front Door", 0.25, "Fighting", T0)
        topics = {
            "binary_sensor": "homeassistant/binary_sensor/dsanet_front_door/anomaly/config",
            "score": "homeassistant/sensor/dsanet_front_door/score/config",
            "category": "homeassistant/sensor/dsanet_front_door/category/config",
        }
        configs = {k: sub.wait_for(1, topic=t) for k, t in topics.items()}
        assert all(len(v) == 1 and v[0].qos == 1 for v in configs.values()), configs
        binary, score, category = (configs[k][0].json() for k in ("binary_sensor", "score", "category"))
        assert binary["state_topic"] == "dsanet/Front Door/alarm" and binary["device_class"] == "problem"
        assert score["state_topic"] == category["state_topic"] == "dsanet/Front Door/anomaly"
        assert score["value_template"] == "{{ value_json.score }}"
        assert category["value_template"] == "{{ value_json.category }}"
        ids = {c["unique_id"] for c in (binary, score, category)}
        assert ids == {"dsanet_front_door_anomaly", "dsanet_front_door_score", "dsanet_front_door_category"}
        assert all(c["device"]["identifiers"] == ["dsanet_front_door"] and c["device"]["name"] == "Front Door"
                   and c["availability_topic"] == "dsanet/available" for c in (binary, score, category))
        # the score topic carries what the templates read
        assert sub.wait_for(1, topic="dsanet/Front Door/anomaly")[0].json()["score"] == 0.25
        # the binary sensor starts OFF, goes ON with a delivered start and OFF with its end
        assert sub.wait_for(1, topic="dsanet/Front Door/alarm")[0].payload == b"OFF"
        events = make_events("Front Door", 1)
        for e in events:
            s.submit(e)
        states = sub.wait_for(1 + len(events), topic="dsanet/Front Door/alarm")
        assert [m.payload for m in states] == [b"OFF"] + [b"OFF" if e.type == "end" else b"ON" for e in events]
        # retained: Home Assistant starting later still learns every entity and the current state
        with MqttCollector(mqtt_broker.port, ["homeassistant/#", "dsanet/Front Door/alarm"]) as late:
            got = late.wait_for(4)
            assert {m.topic for m in got} == {*topics.values(), "dsanet/Front Door/alarm"}
            assert all(m.retain for m in got) and late.wait_for(1, topic="dsanet/Front Door/alarm")[0].payload == b"OFF"

        # a broker restarted without persistence forgets retained messages: the sink announces again
        sub.clear()
        mqtt_broker.restart()
        again = sub.wait_for(1, topic=topics["binary_sensor"], timeout=30)
        assert again and again[0].json()["unique_id"] == "dsanet_front_door_anomaly"


@pytest.mark.system
def test_discovery_is_off_unless_asked(mqtt_broker, tmp_path: Path) -> None:
    from tests.fixtures.mqtt import MqttCollector

    s = mqtt_sink(mqtt_broker.port, tmp_path, score_interval=0.0)
    with MqttCollector(mqtt_broker.port, ["homeassistant/#", "dsanet/#"]) as sub, _stopping(s):
        s.start()
        assert sub.wait_for(1, topic="dsanet/available")
        s.publish_score("cam1", 0.5, "Fighting", T0)
        assert sub.wait_for(1, topic="dsanet/cam1/anomaly")
        for e in make_events("cam1", 1):
            s.submit(e)
        assert len(sub.wait_for(3, topic="dsanet/events")) == 3
        assert not [m for m in sub.wait_for(0) if m.topic.startswith("homeassistant/") or m.topic.endswith("/alarm")]
