//! Telling the agents of other processes that the store changed, over the cloud's RabbitMQ
//! (`[notifications] transport_url`), so that a `POST` on a server reaches the network node in
//! milliseconds rather than at the agent's next look at the store's generation (every 2 s).
//!
//! A process that writes mappings without an agent of its own (`praas server`, `praas
//! monitor`) publishes an empty message on the fanout exchange [`EXCHANGE`] after its commits
//! (one per wake-up of its change feed: a burst of commits is one message). Each agent binds a
//! private queue to it and looks at the store when a message arrives. The message carries
//! nothing: the store stays the only source of truth, and a lost message costs only the wait
//! for the next look. A lost broker is reconnected with backoff on both sides.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicPublishOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::store::ChangeFeed;
use crate::util::amqp_url;

/// The fanout exchange of change announcements.
pub const EXCHANGE: &str = "praas.changes";

const FIRST_PAUSE: Duration = Duration::from_millis(500);
const LONGEST_PAUSE: Duration = Duration::from_secs(30);

async fn channel(url: &str, name: &str) -> Result<Channel, lapin::Error> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let connection = Connection::connect(url, properties).await?;
    let channel = connection.create_channel().await?;
    channel
        .exchange_declare(
            EXCHANGE,
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(channel)
}

/// Publishes an announcement after each wake-up of `feed` (commits of this process), until the
/// task is dropped.
pub async fn announce(transport_url: String, feed: Arc<ChangeFeed>) {
    let url = match amqp_url(&transport_url) {
        Ok(u) => u,
        Err(e) => {
            warn!(error = %e, "change announcements disabled");
            return;
        }
    };
    let name = format!("praas-announcer:{}", std::process::id());
    let mut pause = FIRST_PAUSE;
    loop {
        match channel(&url, &name).await {
            Ok(channel) => {
                info!(exchange = EXCHANGE, "announcing changes to the agents");
                pause = FIRST_PAUSE;
                loop {
                    feed.changed().await;
                    let sent = channel
                        .basic_publish(
                            EXCHANGE,
                            "",
                            BasicPublishOptions::default(),
                            b"",
                            BasicProperties::default(),
                        )
                        .await;
                    if let Err(e) = sent {
                        warn!(error = %e, "cannot announce a change; reconnecting");
                        break;
                    }
                }
            }
            Err(e) => warn!(error = %e, ?pause, "change announcements unavailable; retrying"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}

/// Wakes `wake` on every announcement, and after every (re)connection (announcements may have
/// been missed), until the task is dropped.
pub async fn listen(transport_url: String, wake: Arc<Notify>) {
    let url = match amqp_url(&transport_url) {
        Ok(u) => u,
        Err(e) => {
            warn!(error = %e, "change announcements disabled");
            return;
        }
    };
    let name = format!("praas-agent:{}", std::process::id());
    let mut pause = FIRST_PAUSE;
    loop {
        match consume(&url, &name, &wake).await {
            Ok(()) => warn!("the change announcements ended; reconnecting"),
            Err(e) => warn!(error = %e, ?pause, "change announcements unavailable; retrying"),
        }
        wake.notify_one();
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}

async fn consume(url: &str, name: &str, wake: &Notify) -> Result<(), lapin::Error> {
    let channel = channel(url, name).await?;
    let mut deliveries = crate::util::private_consumer(&channel, EXCHANGE, "", name).await?;
    info!(
        exchange = EXCHANGE,
        "listening for changes announced by the servers"
    );
    wake.notify_one();
    while let Some(delivery) = deliveries.next().await {
        let delivery = delivery?;
        debug!("a change was announced");
        wake.notify_one();
        delivery.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}
