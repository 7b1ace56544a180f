//! Small helpers shared by several parts.

/// `url` with every password replaced by `***`, for messages and logs.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
    let hosts: Vec<String> = hosts
        .split(',')
        .map(|h| match h.rsplit_once('@') {
            Some((credentials, host)) => {
                let user = credentials.split(':').next().unwrap_or_default();
                format!("{user}:***@{host}")
            }
            None => h.to_string(),
        })
        .collect();
    let path = if rest.contains('/') {
        format!("/{path}")
    } else {
        String::new()
    };
    format!("{scheme}://{}{path}", hosts.join(","))
}

/// An error and its sources, `outer: inner: innermost`, for log lines (each error's own
/// message says only what it adds).
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

/// A transport URL that is not one of RabbitMQ.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportUrlError {
    #[error("{0:?} is not a rabbit:// transport URL")]
    NotRabbit(String),
    #[error("{0:?} names no host")]
    NoHost(String),
}

/// `rabbit://user:pass@host:port/vhost` (oslo.messaging's form) as an AMQP URL. Only the first
/// host of a list is used. Errors show the URL without its password.
pub fn amqp_url(transport_url: &str) -> Result<String, TransportUrlError> {
    let shown = redacted(transport_url);
    let rest = transport_url
        .strip_prefix("rabbit://")
        .or_else(|| transport_url.strip_prefix("amqp://"))
        .ok_or_else(|| TransportUrlError::NotRabbit(shown.clone()))?;
    let (hosts, vhost) = rest.split_once('/').unwrap_or((rest, ""));
    let first = hosts.split(',').next().unwrap_or_default();
    if first.is_empty() {
        return Err(TransportUrlError::NoHost(shown));
    }
    let vhost = if vhost.is_empty() { "%2f" } else { vhost };
    Ok(format!("amqp://{first}/{vhost}"))
}

/// Consumes a private queue (exclusive, deleted with the connection, so a stopped process
/// leaves nothing behind on the broker) bound to `exchange` with `routing_key`.
pub async fn private_consumer(
    channel: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    consumer_tag: &str,
) -> Result<lapin::Consumer, lapin::Error> {
    use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let queue = channel
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().as_str(),
            exchange,
            routing_key,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .basic_consume(
            queue.name().as_str(),
            consumer_tag,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Lets glibc's allocator keep at most two arenas in this process. By default each thread
/// that meets contention gets an arena of its own (up to eight per core), and memory freed in
/// an arena stays with it: the agent's threads (runtime workers, the blocking ones that
/// program namespaces) then held ≈ 10 MiB of freed memory at 100,000 mappings (68 → 58 MiB
/// resident, `benches/agent.rs`). What `MALLOC_ARENA_MAX=2` does, which services set for the
/// same reason; an explicit `MALLOC_ARENA_MAX` in the environment is left to win.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before the runtime starts.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_replaced() {
        assert_eq!(
            redacted("rabbit://u:p@h1:5672,v:q@h2:5672/openstack"),
            "rabbit://u:***@h1:5672,v:***@h2:5672/openstack"
        );
        assert_eq!(redacted("rabbit://h:5672"), "rabbit://h:5672");
        assert_eq!(
            redacted("mysql+pymysql://praas:s3cret@db/praas"),
            "mysql+pymysql://praas:***@db/praas"
        );
    }
}
