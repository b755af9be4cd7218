"""An independent CloudEvents HTTP receiver: every request meshgate's HTTP uplink POSTs is parsed with the
CloudEvents Python SDK (binary and structured mode by its HTTP binding, each member of a batch by its JSON
format). Prints `listening PORT` first, then one JSON object per event received:
{mode, id, type, deviceid, data, status, authorization, apikey, traceparent (the CloudEvents extension),
traceparent_header (W3C's HTTP header), t}. A request that does not parse is answered
400 and reported as {"error": ...}.

usage: cloudevents_receiver.py [--answers 503:2,500,200] [--refuse TEXT] [--tls CERT KEY]

--answers: the statuses of the first requests, in order (`503:2` adds `Retry-After: 2`); 200 after them.
--refuse: answer 400 to a request whose body contains TEXT.
"""

import argparse
import json
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from cloudevents.core.formats.json import JSONFormat

lock = threading.Lock()
answers: list[tuple[int, str | None]] = []
refuse: str | None = None


def emit(record: dict) -> None:
    with lock:
        print(json.dumps(record), flush=True)


def describe(event, mode: str, status: int, headers: dict) -> dict:
    attributes = event.get_attributes()
    data = event.get_data()
    if isinstance(data, (bytes, bytearray)):
        data = json.loads(data)
    return {
        "mode": mode,
        "id": attributes["id"],
        "type": attributes["type"],
        "deviceid": attributes.get("deviceid"),
        "data": data,
        "status": status,
        "authorization": headers.get("authorization"),
        "apikey": headers.get("x-api-key"),
        "traceparent": attributes.get("traceparent"),
        "traceparent_header": headers.get("traceparent"),
        "t": time.monotonic(),
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        with lock:
            status, retry_after = answers.pop(0) if answers else (200, None)
        if refuse is not None and refuse.encode() in body:
            status, retry_after = 400, None
        content_type = headers.get("content-type", "")
        try:
            if content_type.startswith("application/cloudevents-batch+json"):
                events = [JSONFormat().read(None, json.dumps(e)) for e in json.loads(body)]
                records = [describe(e, "batch", status, headers) for e in events]
            else:
                event = from_http_event(HTTPMessage(headers=headers, body=body))
                mode = "structured" if content_type.startswith("application/cloudevents+json") else "binary"
                records = [describe(event, mode, status, headers)]
        except Exception as e:  # the SDK could not read what meshgate sent: a test failure, reported as such
            status, retry_after = 400, None
            records = [{"error": f"{type(e).__name__}: {e}", "content_type": content_type}]
        for r in records:
            emit(r)
        self.send_response(status)
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        answer = b"{}" if status < 300 else b'{"error":"refused by the test receiver"}'
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


def main() -> int:
    global refuse
    parser = argparse.ArgumentParser()
    parser.add_argument("--answers", default="")
    parser.add_argument("--refuse")
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    args = parser.parse_args()
    refuse = args.refuse
    for a in filter(None, args.answers.split(",")):
        code, _, after = a.partition(":")
        answers.append((int(code), after or None))
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if args.tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*args.tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
