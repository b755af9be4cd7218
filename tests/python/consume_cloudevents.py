"""An independent consumer of meshgate's RabbitMQ output: pika reads the queue, the CloudEvents Python SDK parses
each message with its AMQP binding. Prints one JSON object per event; exits non-zero unless `count` events arrive
and every one parses.

usage: consume_cloudevents.py QUEUE COUNT [AMQP_URL]
"""

import json
import sys
import time

import pika
from cloudevents.core.bindings.amqp import AMQPMessage, from_amqp
from cloudevents.core.formats.json import JSONFormat


def main() -> int:
    queue, count = sys.argv[1], int(sys.argv[2])
    url = sys.argv[3] if len(sys.argv) > 3 else "amqp://guest:guest@127.0.0.1:5672/%2f"
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    deadline = time.monotonic() + 30
    seen = 0
    while seen < count and time.monotonic() < deadline:
        method, properties, body = channel.basic_get(queue=queue, auto_ack=True)
        if method is None:
            time.sleep(0.05)
            continue
        message = AMQPMessage(
            properties={"content-type": properties.content_type} if properties.content_type else {},
            application_properties=dict(properties.headers or {}),
            application_data=body,
        )
        event = from_amqp(message, JSONFormat())
        attributes = event.get_attributes()
        data = event.get_data()
        if isinstance(data, (bytes, bytearray)):
            data = json.loads(data)
        print(json.dumps({
            "id": attributes["id"],
            "type": attributes["type"],
            "source": attributes["source"],
            "deviceid": attributes.get("deviceid"),
            "data": data,
        }, default=str))
        seen += 1
    connection.close()
    if seen < count:
        print(f"only {seen} of {count} events arrived", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
