// MQTT.js as a device over mqtts with a client certificate: publishes one message at QoS 1 and prints
// "published" once the gateway acknowledged it (tests/tests/tls_recipe.rs).
// usage: node mqttjs_publish.mjs PORT CA CERT KEY TOPIC MESSAGE
import fs from "node:fs";
import mqtt from "mqtt";

const [port, ca, cert, key, topic, message] = process.argv.slice(2);
const client = mqtt.connect(`mqtts://localhost:${port}`, {
  ca: fs.readFileSync(ca),
  cert: fs.readFileSync(cert),
  key: fs.readFileSync(key),
  protocolVersion: 5,
  reconnectPeriod: 0,
  connectTimeout: 10_000,
});
const fail = (e) => {
  console.error(`MQTT.js: ${e?.message ?? e}`);
  process.exit(1);
};
client.on("error", fail);
client.on("close", () => fail("connection closed"));
client.on("connect", () => {
  client.publish(topic, message, { qos: 1 }, (e) => {
    if (e) fail(e);
    console.log("published");
    client.removeAllListeners("close");
    client.end(false, {}, () => process.exit(0));
  });
});
setTimeout(() => fail("timed out"), 15_000);
