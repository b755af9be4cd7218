"""An independent reader of meshgate's NATS JetStream output: nats-py reads every message of a stream with an
ephemeral pull consumer, and the CloudEvents Python SDK parses each one (the NATS binding's `ce-` headers are the
HTTP binding's, so its HTTP reader takes them). Prints one JSON object per message, in stream order: the event's
id, deviceid and data, and the stream sequence. Exits non-zero if a message does not parse.

usage: nats_stream_events.py STREAM [NATS_URL]
"""

import asyncio
import json
import sys

import nats
from nats.js.api import AckPolicy, ConsumerConfig
from cloudevents.core.bindings.http import HTTPMessage, from_http_event


async def main() -> int:
    stream = sys.argv[1]
    url = sys.argv[2] if len(sys.argv) > 2 else "nats://127.0.0.1:4222"
    nc = await nats.connect(url)
    js = nc.jetstream()
    info = await js.stream_info(stream)
    total = info.state.messages
    # No acknowledgements: a reader, not a worker (and nothing held back by max_ack_pending).
    sub = await js.pull_subscribe("", durable=None, stream=stream, config=ConsumerConfig(ack_policy=AckPolicy.NONE))
    seen = 0
    while seen < total:
        try:
            batch = await sub.fetch(min(500, total - seen), timeout=5)
        except nats.errors.TimeoutError:
            print(f"only {seen} of {total} messages arrived", file=sys.stderr)
            return 1
        for msg in batch:
            headers = {k.lower(): v for k, v in (msg.headers or {}).items()}
            headers.pop("nats-msg-id", None)
            event = from_http_event(HTTPMessage(headers=headers, body=msg.data))
            attributes = event.get_attributes()
            data = event.get_data()
            if isinstance(data, (bytes, bytearray)):
                data = json.loads(data)
            print(json.dumps({
                "id": attributes["id"],
                "type": attributes["type"],
                "deviceid": attributes.get("deviceid"),
                "data": data,
                "seq": msg.metadata.sequence.stream,
            }))
            seen += 1
    await nc.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
