//! Neutron's notifications on RabbitMQ, so that the monitor reacts within moments instead of
//! at its next polling cycle (which stays as the safety net).
//!
//! Neutron publishes through oslo.messaging on the topic exchange `neutron` with the routing
//! key `notifications.info`; the body is an envelope whose `oslo.message` field is itself JSON
//! text carrying `event_type`. A private queue is bound to that key; the events that can
//! change a mapping wake the monitor. A lost broker is reconnected with backoff.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde_json::Value;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

/// Events after which mappings may need a change.
pub const EVENTS: [&str; 6] = [
    "port.delete.end",
    "port.update.end",
    "router.update.end",
    "router.delete.end",
    "router.interface.delete",
    "router.interface.delete.end",
];

/// The event type of an oslo.messaging notification body, if it is one.
pub fn event_type(body: &[u8]) -> Option<String> {
    let outer: Value = serde_json::from_slice(body).ok()?;
    // oslo.messaging's envelope (version 2.0) carries the message as JSON text.
    let message = match outer.get("oslo.message").and_then(Value::as_str) {
        Some(text) => serde_json::from_str::<Value>(text).ok()?,
        None => outer,
    };
    message
        .get("event_type")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// Whether `event` can change a mapping.
pub fn relevant(event: &str) -> bool {
    EVENTS.contains(&event)
}

pub use crate::util::amqp_url;

/// Everyone to wake on an event.
struct Wakes(Vec<Arc<Notify>>);

impl Wakes {
    fn notify_one(&self) {
        for w in &self.0 {
            w.notify_one();
        }
    }
}

/// Where to listen.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// oslo.messaging's `rabbit://…` URL.
    pub transport_url: String,
    /// Neutron's control exchange.
    pub exchange: String,
    /// How the connection shows in RabbitMQ (`rabbitmqctl list_connections client_properties`,
    /// the management UI), as oslo.messaging names its own.
    pub connection_name: String,
    /// Where the notifications received are counted.
    pub events: EventCounts,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    /// One of the events the monitor acts on, or `other`.
    event_type: String,
}

/// Notifications received, by event type: `praas_neutron_notifications_total`.
#[derive(Clone, Debug, Default)]
pub struct EventCounts(Family<EventLabels, Counter>);

impl EventCounts {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "neutron_notifications",
            "Neutron notifications received, by event type (other: those PRaaS does not act on)",
            self.0.clone(),
        );
    }

    fn count(&self, event: Option<&str>) {
        let event_type = event.filter(|e| relevant(e)).unwrap_or("other");
        self.0
            .get_or_create(&EventLabels {
                event_type: event_type.into(),
            })
            .inc();
    }

    /// How many of `event_type` were received (`other` for the rest).
    pub fn received(&self, event_type: &str) -> u64 {
        self.0
            .get(&EventLabels {
                event_type: event_type.into(),
            })
            .map(|c| c.get())
            .unwrap_or(0)
    }
}

impl Subscription {
    /// Named `praas-monitor:<host>:<pid>`.
    pub fn new(transport_url: String, exchange: String) -> Self {
        let host = super::hostname();
        Subscription {
            transport_url,
            exchange,
            connection_name: format!("praas-monitor:{host}:{}", std::process::id()),
            events: EventCounts::default(),
        }
    }
}

/// Consumes notifications until the task is dropped, waking `wake` on relevant events;
/// `listening` is notified each time the queue is bound and consumed.
pub async fn listen(subscription: Subscription, wake: Arc<Notify>, listening: Arc<Notify>) {
    listen_all(subscription, vec![wake], listening).await
}

/// As [`listen`], waking each of `wakes` (the monitor, the API's router cache) on every
/// relevant event and after every reconnection.
pub async fn listen_all(
    subscription: Subscription,
    wakes: Vec<Arc<Notify>>,
    listening: Arc<Notify>,
) {
    let wake = Wakes(wakes);
    let Subscription {
        transport_url,
        exchange,
        connection_name,
        events,
    } = subscription;
    let url = match amqp_url(&transport_url) {
        Ok(u) => u,
        Err(e) => {
            warn!(error = %e, "notifications disabled");
            return;
        }
    };
    const FIRST_PAUSE: Duration = Duration::from_millis(500);
    let mut pause = FIRST_PAUSE;
    loop {
        let mut consumed = false;
        let properties =
            ConnectionProperties::default().with_connection_name(connection_name.as_str().into());
        let result = consume(
            &url,
            properties,
            &exchange,
            &wake,
            &listening,
            &events,
            &mut consumed,
        )
        .await;
        // A connection that got as far as consuming starts the backoff again.
        if consumed {
            pause = FIRST_PAUSE;
        }
        match result {
            Ok(()) => warn!("the notification stream ended; reconnecting"),
            Err(e) => warn!(error = %e, ?pause, "notifications unavailable; reconnecting"),
        }
        // A reconnection may have missed events: one cycle catches up.
        wake.notify_one();
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

async fn consume(
    url: &str,
    properties: ConnectionProperties,
    exchange: &str,
    wake: &Wakes,
    listening: &Notify,
    events: &EventCounts,
    consumed: &mut bool,
) -> Result<(), lapin::Error> {
    let conn = Connection::connect(url, properties).await?;
    let channel = conn.create_channel().await?;
    // As oslo.messaging declares it (not durable), so that either side may come first.
    channel
        .exchange_declare(
            exchange,
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut consumer =
        crate::util::private_consumer(&channel, exchange, "notifications.info", "praas-monitor")
            .await?;
    info!(%exchange, "listening to Neutron's notifications");
    *consumed = true;
    listening.notify_one();
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        let event = event_type(&delivery.data);
        events.count(event.as_deref());
        match event {
            Some(event) if relevant(&event) => {
                debug!(%event, "notification");
                wake.notify_one();
            }
            Some(_) => {}
            None => debug!("a message that is not a notification"),
        }
        delivery.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oslo_envelopes_are_unwrapped() {
        let inner =
            r#"{"event_type": "port.delete.end", "payload": {"port_id": "p"}, "priority": "INFO"}"#;
        let body = serde_json::json!({"oslo.version": "2.0", "oslo.message": inner}).to_string();
        assert_eq!(
            event_type(body.as_bytes()).as_deref(),
            Some("port.delete.end")
        );
        // Version 1 bodies carry the message directly.
        assert_eq!(
            event_type(inner.as_bytes()).as_deref(),
            Some("port.delete.end")
        );
        assert_eq!(event_type(b"not json"), None);
        assert!(relevant("router.update.end") && !relevant("port.create.end"));
    }

    #[test]
    fn transport_urls_become_amqp_urls() {
        assert_eq!(
            amqp_url("rabbit://guest:guest@127.0.0.1:5672/").unwrap(),
            "amqp://guest:guest@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            amqp_url("rabbit://u:p@h1:5672,u:p@h2:5672/openstack").unwrap(),
            "amqp://u:p@h1:5672/openstack"
        );
        assert!(amqp_url("kafka://x").is_err());
        assert!(amqp_url("rabbit:///").is_err());
        let refused = amqp_url("kafka://u:secret@h:5672/")
            .unwrap_err()
            .to_string();
        assert!(!refused.contains("secret"), "{refused}");
    }
}
