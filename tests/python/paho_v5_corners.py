"""MQTT 5 corners of meshgate's broker, checked with Eclipse Paho (an independent client): subscription
identifiers, No Local, Retain Handling, shared subscriptions, and request/response properties passed through.
Prints what it saw as JSON; exits non-zero on the first mismatch.

usage: paho_v5_corners.py PORT
"""

import json
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

PORT = int(sys.argv[1])


class Collector:
    def __init__(self, client_id):
        self.messages = []
        self.subacks = []
        self.lock = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.on_message = self.on_message
        self.client.on_subscribe = self.on_subscribe
        self.client.connect("127.0.0.1", PORT, keepalive=30)
        self.client.loop_start()

    def on_message(self, _client, _userdata, msg):
        with self.lock:
            self.messages.append(msg)
            self.lock.notify_all()

    def on_subscribe(self, _client, _userdata, _mid, reason_codes, _props):
        with self.lock:
            self.subacks.append([rc.value for rc in reason_codes])
            self.lock.notify_all()

    def subscribe(self, topic, options, sub_id=None):
        props = None
        if sub_id is not None:
            props = Properties(PacketTypes.SUBSCRIBE)
            props.SubscriptionIdentifier = sub_id
        before = len(self.subacks)
        self.client.subscribe(topic, options=options, properties=props)
        with self.lock:
            self.lock.wait_for(lambda: len(self.subacks) > before, timeout=5)
        return self.subacks[-1]

    def wait(self, count, timeout=3.0):
        with self.lock:
            self.lock.wait_for(lambda: len(self.messages) >= count, timeout=timeout)
        return list(self.messages)

    def stop(self):
        self.client.loop_stop()
        self.client.disconnect()


def check(what, got, want):
    if got != want:
        print(json.dumps({"failed": what, "got": repr(got), "want": repr(want)}))
        sys.exit(1)
    print(json.dumps({"ok": what}))


def main():
    # Subscription identifiers and No Local.
    me = Collector("paho-me")
    check("suback", me.subscribe("paho/chat", SubscribeOptions(qos=1, noLocal=True), sub_id=7), [1])
    other = Collector("paho-other")
    me.client.publish("paho/chat", b"mine", qos=1).wait_for_publish(5)
    request = Properties(PacketTypes.PUBLISH)
    request.ResponseTopic = "paho/reply"
    request.CorrelationData = b"c-42"
    request.UserProperty = ("k", "v")
    other.client.publish("paho/chat", b"theirs", qos=1, properties=request).wait_for_publish(5)
    got = me.wait(1)
    time.sleep(0.3)
    got = me.messages
    check("no local", [m.payload for m in got], [b"theirs"])
    props = got[0].properties
    check("subscription identifier", props.SubscriptionIdentifier, [7])
    check("response topic", props.ResponseTopic, "paho/reply")
    check("correlation data", props.CorrelationData, b"c-42")
    check("user property", props.UserProperty, [("k", "v")])

    # Retain Handling 2 (never) and 0 (always).
    other.client.publish("paho/state", b"s1", qos=1, retain=True).wait_for_publish(5)
    time.sleep(0.2)
    watcher = Collector("paho-watcher")
    watcher.subscribe("paho/state", SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND))
    time.sleep(0.3)
    check("retain handling 2", len(watcher.messages), 0)
    watcher.subscribe("paho/state", SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE))
    got = watcher.wait(1)
    check("retain handling 0", [(m.payload, m.retain) for m in got], [(b"s1", True)])

    # Shared subscription: two members split ten messages.
    a, b = Collector("paho-a"), Collector("paho-b")
    a.subscribe("$share/grp/paho/jobs", SubscribeOptions(qos=1))
    b.subscribe("$share/grp/paho/jobs", SubscribeOptions(qos=1))
    for n in range(10):
        other.client.publish("paho/jobs", str(n).encode(), qos=1).wait_for_publish(5)
    time.sleep(0.5)
    counts = (len(a.messages), len(b.messages))
    check("shared split", counts, (5, 5))
    check("shared total", sorted(int(m.payload) for m in a.messages + b.messages), list(range(10)))
    other.client.publish("paho/state", b"", qos=1, retain=True).wait_for_publish(5)
    for c in (me, other, watcher, a, b):
        c.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
