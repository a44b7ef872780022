"""Example MQTT subscriber for dsanet-stream events that handles each ``(id, seq)`` once.

Delivery is at-least-once: QoS 1 and the sink's spool mean an event can arrive twice (after a broker or
service restart between PUBLISH and PUBACK). De-duplicate on ``(id, seq)``. Run it::

    python docs/examples/mqtt_subscriber.py --host 127.0.0.1 --port 1883 --prefix dsanet

For no gaps while this subscriber is away, use a fixed client id with a persistent session (as here) and
raise mosquitto's ``max_queued_messages`` (see docs/events.md).
"""

from __future__ import annotations

import argparse
import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


class Dedup:
    """Remembers the last ``remember`` ``(id, seq)`` keys; ``first(event)`` is True once per key."""

    def __init__(self, remember: int = 100_000) -> None:
        self.remember = remember
        self.seen: OrderedDict[tuple[str, int], None] = OrderedDict()
        self.duplicates = 0

    def first(self, event: dict[str, Any]) -> bool:
        key = (str(event["id"]), int(event["seq"]))
        if key in self.seen:
            self.duplicates += 1
            return False
        self.seen[key] = None
        if len(self.seen) > self.remember:
            self.seen.popitem(last=False)
        return True


def subscribe(host: str, port: int, prefix: str, handle: Callable[[dict[str, Any]], None],
              client_id: str = "dsanet-example-subscriber") -> Any:
    """Connect, subscribe to ``<prefix>/events`` at QoS 1, and call ``handle`` once per ``(id, seq)``.
    Returns the started paho client (``loop_stop()`` / ``disconnect()`` to end)."""
    import paho.mqtt.client as mqtt

    dedup = Dedup()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    client.user_data_set(dedup)

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        c.subscribe(f"{prefix}/events", qos=1)

    def on_message(c: Any, userdata: Any, msg: Any) -> None:
        event = json.loads(msg.payload)
        if dedup.first(event):
            handle(event)

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(host, port, keepalive=30)
    client.loop_start()
    client.dedup = dedup  # type: ignore[attr-defined]
    return client


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--prefix", default="dsanet")
    args = ap.parse_args()
    client = subscribe(args.host, args.port, args.prefix,
                       lambda e: print(f"{e['type']:6s} {e['camera']} {e.get('category')} id={e['id']} seq={e['seq']}"))
    try:
        input("listening; Enter to stop\n")
    finally:
        client.loop_stop()
        client.disconnect()


if __name__ == "__main__":
    main()
