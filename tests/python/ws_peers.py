"""Independent WebSocket peers for meshgate: Python's `websockets` publishes ten CloudEvents over the
`cloudevents.json` subprotocol and waits for their acks; Eclipse Paho publishes at QoS 1 and receives its own
message over MQTT-over-WebSocket (the `mqtt` subprotocol). Prints JSON lines; exits non-zero on the first failure.

usage: ws_peers.py WS_PORT MQTT_PORT
"""

import asyncio
import json
import sys
import threading

import paho.mqtt.client as mqtt
import websockets

WS_PORT = int(sys.argv[1])


def say(**fields):
    print(json.dumps(fields), flush=True)


async def cloudevents_json():
    uri = f"ws://127.0.0.1:{WS_PORT}/?client=py-1"
    async with websockets.connect(uri, subprotocols=["cloudevents.json"]) as ws:
        assert ws.subprotocol == "cloudevents.json", ws.subprotocol
        for i in range(10):
            event = {"specversion": "1.0", "id": f"py-{i}", "source": "/python/websockets", "type": "com.example.py",
                     "data": {"i": i}}
            await ws.send(json.dumps(event))
        acked = []
        while len(acked) < 10:
            answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if "ack" not in answer:
                raise SystemExit(f"unexpected answer {answer}")
            acked.append(answer["ack"])
        if acked != [f"py-{i}" for i in range(10)]:
            raise SystemExit(f"acks out of order: {acked}")
    say(ok="websockets acked 10")


def paho_over_websocket():
    received = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-ws", transport="websockets",
                         protocol=mqtt.MQTTv5)
    client.ws_set_options(path="/mqtt")

    def on_message(_client, _userdata, message):
        if message.topic == "paho/ws/hello" and message.payload == b"over websocket":
            received.set()

    client.on_message = on_message
    client.connect("127.0.0.1", WS_PORT, keepalive=30)
    client.loop_start()
    client.subscribe("paho/ws/#", qos=1)
    info = client.publish("paho/ws/hello", b"over websocket", qos=1)
    info.wait_for_publish(10)
    if not info.is_published():
        raise SystemExit("QoS 1 publish over WebSocket not acknowledged")
    say(ok="paho ws published")
    if not received.wait(10):
        raise SystemExit("own message not received over WebSocket")
    say(ok="paho ws received")
    client.disconnect()
    client.loop_stop()


asyncio.run(cloudevents_json())
paho_over_websocket()
