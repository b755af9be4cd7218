"""An AMQP device built on pika (an independent AMQP 0-9-1 client) against meshgate's AMQP listener: publishes
20 binary-mode CloudEvents with publisher confirms, then consumes one command from a queue bound to its command
topics. Prints JSON lines; exits non-zero on the first failure.

usage: pika_device.py PORT
"""

import json
import sys

import pika

PORT = int(sys.argv[1])
DEVICE = "pika-1"


def say(**fields):
    print(json.dumps(fields), flush=True)


params = pika.ConnectionParameters(
    host="127.0.0.1",
    port=PORT,
    credentials=pika.PlainCredentials("guest", "guest"),
    client_properties={"connection_name": DEVICE},
    heartbeat=30,
)
connection = pika.BlockingConnection(params)
channel = connection.channel()
channel.confirm_delivery()

confirmed = 0
for i in range(20):
    headers = {
        "cloudEvents_specversion": "1.0",
        "cloudEvents_id": f"pika-{i}",
        "cloudEvents_source": f"/devices/{DEVICE}",
        "cloudEvents_type": "com.example.pika",
        "cloudEvents_seq": i,
    }
    props = pika.BasicProperties(content_type="application/json", headers=headers, delivery_mode=2)
    # With confirms on, basic_publish returns only after basic.ack and raises on basic.nack.
    channel.basic_publish("amq.topic", f"devices.{DEVICE}.events", json.dumps({"n": i}).encode(), props)
    confirmed += 1
say(confirmed=confirmed)

queue = channel.queue_declare(queue="", exclusive=True).method.queue
channel.queue_bind(queue=queue, exchange="amq.topic", routing_key=f"devices.{DEVICE}.commands.#")
channel.basic_qos(prefetch_count=1)
say(ready=queue)

for method, properties, body in channel.consume(queue, inactivity_timeout=20):
    if method is None:
        say(error="no command within 20 s")
        sys.exit(1)
    say(command=method.routing_key, body=body.decode())
    channel.basic_ack(method.delivery_tag)
    break
channel.cancel()
connection.close()
