"""Publishes one message with publisher confirms over amqps with pika, trusting the test's CA; with a client
certificate it logs in with SASL EXTERNAL, else with guest/guest and the given connection name. Prints
"confirmed" once basic.ack arrived; any failure raises.

usage: pika_tls_publish.py PORT CA_FILE ROUTING_KEY BODY [--name NAME] [--cert CERT --key KEY]
"""

import argparse
import ssl

import pika

args = argparse.ArgumentParser()
args.add_argument("port", type=int)
args.add_argument("ca_file")
args.add_argument("routing_key")
args.add_argument("body")
args.add_argument("--name")
args.add_argument("--cert")
args.add_argument("--key")
a = args.parse_args()

ctx = ssl.create_default_context(cafile=a.ca_file)
extra = {}
if a.cert:
    ctx.load_cert_chain(a.cert, a.key)
    extra["credentials"] = pika.credentials.ExternalCredentials()
if a.name:
    extra["client_properties"] = {"connection_name": a.name}
params = pika.ConnectionParameters(host="127.0.0.1", port=a.port, ssl_options=pika.SSLOptions(ctx, "localhost"), **extra)
connection = pika.BlockingConnection(params)
channel = connection.channel()
channel.confirm_delivery()
channel.basic_publish("amq.topic", a.routing_key, a.body.encode())
connection.close()
print("confirmed")
