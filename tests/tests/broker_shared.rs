//! Conformance of the local broker, shared subscriptions (MQTT 5 section 4.8.2): `$share/{group}/{filter}`
//! spreads messages across the group, and a member that leaves with messages unacknowledged has them handed to
//! another member.

use std::time::Duration;

use meshgate_protocols::mqtt::{Connect, QoS, Version};
use meshgate_tests::Gateway;
use meshgate_tests::clients::{Client, Options};
use meshgate_tests::raw::{RawClient, Reply};

const QUIET: Duration = Duration::from_millis(400);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscribers_split_the_load_and_take_over_for_a_member_that_leaves() -> anyhow::Result<()> {
    let gw = Gateway::start()?;
    let (mut steady, _) = Client::connect(gw.mqtt, &Options::new(true, "steady")).await?;
    assert_eq!(steady.subscribe(&[("$share/workers/jobs/#", 1)]).await?, [1]);
    // A member that takes messages and never acknowledges them.
    let connect =
        Connect { version: Version::V5, clean_start: true, keep_alive: 30, client_id: "flaky", ..Connect::default() };
    let (mut flaky, _) = RawClient::connect_with(gw.mqtt, &connect)?;
    assert_eq!(flaky.subscribe("$share/workers/jobs/#", QoS::AtLeastOnce)?, [1]);

    let (publisher, _) = Client::connect(gw.mqtt, &Options::new(true, "pub")).await?;
    for n in 0..20 {
        publisher.publish(&format!("jobs/{n}"), 1, false, &n.to_string()).await?;
    }
    gw.wait_for_events(20, Duration::from_secs(10))?;
    let mut steady_got: Vec<u32> = steady.drain(QUIET).await.iter().filter_map(|m| m.payload.parse().ok()).collect();
    let mut flaky_got = Vec::new();
    while flaky_got.len() + steady_got.len() < 20 {
        match flaky.recv()? {
            Reply::Publish { payload, .. } => flaky_got.push(String::from_utf8(payload)?.parse::<u32>()?),
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    assert_eq!((steady_got.len(), flaky_got.len()), (10, 10), "round-robin across the group");

    // The flaky member vanishes: its ten unacknowledged messages go to the steady one.
    drop(flaky);
    steady_got.extend(steady.drain(QUIET * 2).await.iter().filter_map(|m| m.payload.parse::<u32>().ok()));
    steady_got.sort_unstable();
    assert_eq!(steady_got, (0..20).collect::<Vec<_>>(), "every message reached the group");
    Ok(())
}
