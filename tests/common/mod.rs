//! Shared helpers of the integration tests.
#![allow(dead_code)]

pub mod metrics;

use std::net::Ipv4Addr;

use praas::dataplane::{Forward, Protocol};
use praas::store::Store;

#[allow(unused_imports)]
pub use praas::testbed::simnode::kernel_tests_enabled;

pub fn forward(id: &str, protocol: Protocol, ext: &str, vm: Ipv4Addr, int: &str) -> Forward {
    Forward {
        id: id.into(),
        protocol,
        external_ip: praas::testbed::simnode::GATEWAY_IP,
        external_ports: ext.parse().unwrap(),
        internal_ip: vm,
        internal_ports: int.parse().unwrap(),
        allowed_cidrs: vec![],
        masquerade: false,
    }
}

/// A test module `$name` whose tests `sqlite` and `mariadb` run `$body` on a fresh store of
/// each (an `Arc<Store>`); the MariaDB one is skipped with a line without a server (a failure
/// under CI).
#[allow(unused_macros)]
macro_rules! on_both {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let store = Arc::new(common::sqlite_store().await);
                ($body)(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn mariadb() {
                if let Some(store) = common::mariadb_store(stringify!($name)).await {
                    ($body)(Arc::new(store)).await;
                }
            }
        }
    };
}

/// A fresh SQLite store in a temporary file.
pub async fn sqlite_store() -> Store {
    open(&sqlite_url()).await
}

/// The URL of a fresh SQLite database in a temporary file.
pub fn sqlite_url() -> String {
    let dir = std::env::temp_dir().join(format!(
        "praas-store-test-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    format!("sqlite:///{}/praas.db", dir.display())
}

/// The store at `url`, its schema brought up to date.
pub async fn open(url: &str) -> Store {
    let store = Store::open(url).await.unwrap();
    store.migrate().await.unwrap();
    store
}

/// A fresh MariaDB store (its own database), or `None` with the reason printed.
pub async fn mariadb_store(test: &str) -> Option<Store> {
    Some(open(&mariadb_url(test).await?).await)
}

/// The URL of a fresh MariaDB database, or `None` with the reason printed.
pub async fn mariadb_url(test: &str) -> Option<String> {
    let base = std::env::var("PRAAS_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://praas_test:praas-test-password@127.0.0.1/praas_test".into());
    fresh_database(test, &base).await
}

/// A fresh database next to `base`'s, or `None` with the reason printed.
async fn fresh_database(test: &str, base: &str) -> Option<String> {
    sqlx::any::install_default_drivers();
    // A short wait: without a server every test would wait out sqlx's 30 s default.
    let admin = match sqlx::any::AnyPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_secs(3))
        .connect(base)
        .await
    {
        Ok(pool) => pool,
        Err(e) => {
            let shown = praas::util::redacted(base);
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{test}: MariaDB must be reachable in CI at {shown}: {e}");
            }
            praas::testbed::simnode::skipped(
                &format!("{test} on MariaDB"),
                &format!("{shown} not reachable ({e})"),
            );
            return None;
        }
    };
    // One database per test, so that tests running in parallel do not see each other.
    let name = format!("praas_t_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    Some(format!("{}/{name}", base.rsplit_once('/').unwrap().0))
}

/// The URLs of one fresh database on each node of the Galera cluster of `scripts/galera`
/// (named by `PRAAS_TEST_GALERA_URLS`, comma-separated), or `None` with the reason printed;
/// under CI a missing cluster is a failure.
pub async fn galera_urls(test: &str) -> Option<Vec<String>> {
    let Ok(urls) = std::env::var("PRAAS_TEST_GALERA_URLS") else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: CI must run the Galera cluster (scripts/galera up)");
        }
        praas::testbed::simnode::skipped(
            &format!("{test} on Galera"),
            "PRAAS_TEST_GALERA_URLS is not set (scripts/galera up; scripts/test sets it)",
        );
        return None;
    };
    let nodes: Vec<&str> = urls.split(',').map(str::trim).collect();
    let first = fresh_database(test, nodes[0]).await?;
    let name = first.rsplit_once('/').unwrap().1.to_string();
    Some(
        nodes
            .iter()
            .map(|n| format!("{}/{name}", n.rsplit_once('/').unwrap().0))
            .collect(),
    )
}

/// The RabbitMQ of `scripts/services` on loopback.
pub const RABBIT_URL: &str = "rabbit://guest:guest@127.0.0.1:5672/";

/// Whether RabbitMQ answers on loopback. Otherwise it prints one line saying why `test` is
/// skipped and returns false; under CI (which starts RabbitMQ) it panics instead.
pub fn rabbitmq_enabled(test: &str) -> bool {
    if std::net::TcpStream::connect("127.0.0.1:5672").is_ok() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: CI must run RabbitMQ (scripts/services)");
    }
    praas::testbed::simnode::skipped(test, "no RabbitMQ on 127.0.0.1:5672 (scripts/services)");
    false
}
