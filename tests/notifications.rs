//! The monitor's notification listener against the real RabbitMQ: relevant events wake the
//! monitor, and a connection the broker drops is made again. Each test publishes on an
//! exchange of its own, so that no other listener (nor Neutron) is disturbed.

mod common;

use std::sync::Arc;
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use praas::monitor::notifications::{amqp_url, listen, Subscription};
use tokio::sync::Notify;
use tokio::time::timeout;

/// Publishes an oslo.messaging (version 2.0) notification of `event` on `exchange`.
async fn publish(exchange: &str, event: &str) {
    let url = amqp_url(common::RABBIT_URL).unwrap();
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let message = serde_json::json!({"event_type": event, "priority": "INFO",
        "payload": {"port_id": "p"}, "publisher_id": "network.test"});
    let body = serde_json::json!({"oslo.version": "2.0", "oslo.message": message.to_string()});
    channel
        .basic_publish(
            exchange,
            "notifications.info",
            BasicPublishOptions::default(),
            body.to_string().as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    conn.close(200, "done").await.unwrap();
}

/// The broker's process id of the connection named `name` (rabbitmqctl).
fn connection_pid(name: &str) -> Option<String> {
    let out = praas::testbed::simnode::run(
        &[
            "rabbitmqctl",
            "-q",
            "list_connections",
            "pid",
            "client_properties",
        ],
        None,
    )
    .unwrap();
    out.lines()
        .find(|l| l.contains(&format!("\"{name}\"")))
        .and_then(|l| l.split('\t').next())
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_wakes_on_neutron_events_and_reconnects_when_the_broker_drops_it() {
    let test = "the_listener_wakes_on_neutron_events_and_reconnects_when_the_broker_drops_it";
    if !common::rabbitmq_enabled(test) {
        return;
    }
    // rabbitmqctl needs the broker's Erlang cookie, which root has.
    if !nix::unistd::geteuid().is_root() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: CI runs as root");
        }
        praas::testbed::simnode::skipped(test, "rabbitmqctl needs root");
        return;
    }
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let subscription = Subscription {
        transport_url: common::RABBIT_URL.into(),
        exchange: format!("praas-test-{tag}"),
        connection_name: format!("praas-test-{tag}"),
        events: Default::default(),
    };
    let events = subscription.events.clone();
    let exchange = subscription.exchange.clone();
    let name = subscription.connection_name.clone();
    let (wake, listening) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let listener = tokio::spawn(listen(subscription, wake.clone(), listening.clone()));
    timeout(Duration::from_secs(10), listening.notified())
        .await
        .expect("not listening after 10 s");

    // An event that cannot change a mapping does not wake; one that can, does.
    publish(&exchange, "port.create.end").await;
    assert!(
        timeout(Duration::from_millis(500), wake.notified())
            .await
            .is_err(),
        "woken by port.create.end"
    );
    publish(&exchange, "port.delete.end").await;
    timeout(Duration::from_secs(5), wake.notified())
        .await
        .expect("port.delete.end did not wake the monitor");
    // Both were counted for `praas_monitor_notifications_total`: the one acted on by name.
    assert_eq!(events.received("port.delete.end"), 1);
    assert_eq!(events.received("other"), 1);

    // The broker drops the connection: the listener connects again, and wakes the monitor
    // once to catch up on what it may have missed meanwhile.
    let pid = connection_pid(&name).expect("the listener's connection, by its name");
    praas::testbed::simnode::run(
        &[
            "rabbitmqctl",
            "-q",
            "close_connection",
            &pid,
            "test: dropped",
        ],
        None,
    )
    .unwrap();
    timeout(Duration::from_secs(15), listening.notified())
        .await
        .expect("not listening again 15 s after the broker dropped the connection");
    let again = connection_pid(&name).expect("a new connection");
    assert_ne!(again, pid);
    timeout(Duration::from_secs(1), wake.notified())
        .await
        .expect("no catch-up cycle after reconnecting");

    publish(&exchange, "router.update.end").await;
    timeout(Duration::from_secs(5), wake.notified())
        .await
        .expect("router.update.end after the reconnection did not wake the monitor");
    listener.abort();
}
