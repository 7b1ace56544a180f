//! Router facts kept for a short while, so that a create costs one Neutron round trip (the
//! port, which is always read fresh) instead of three more for the router, its interfaces and
//! their subnets.
//!
//! A router's facts are kept for `ttl` (`[openstack] router_cache_seconds`) and dropped at
//! once when Neutron notifies a change of a router or a port (with `[notifications]`), so a
//! removed gateway or interface is seen by the next request. Ports are never cached: who owns
//! a port and which addresses it holds decide what a mapping may reach. Without
//! notifications, a change of a router is seen at most `ttl` late, and the monitor corrects any
//! mapping made in that window (it reads Neutron itself, not this cache).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{DirectoryError, PortInfo, RouterDirectory, RouterInfo, RouterSummary};

/// A [`RouterDirectory`] that keeps the routers another one answered.
pub struct CachedDirectory {
    inner: Arc<dyn RouterDirectory>,
    ttl: Duration,
    routers: Mutex<HashMap<String, (Instant, RouterInfo)>>,
}

impl CachedDirectory {
    pub fn new(inner: Arc<dyn RouterDirectory>, ttl: Duration) -> Self {
        CachedDirectory {
            inner,
            ttl,
            routers: Mutex::default(),
        }
    }

    /// Forgets every router (Neutron said something changed).
    pub fn forget_all(&self) {
        self.routers.lock().expect("not poisoned").clear();
    }

    fn keep(&self, router: &RouterInfo) {
        if self.ttl.is_zero() {
            return;
        }
        let mut routers = self.routers.lock().expect("not poisoned");
        let now = Instant::now();
        // Expired entries go when the map grows, so it never holds more than the routers
        // asked for within one `ttl`.
        if routers.len() >= 1024 {
            routers.retain(|_, (at, _)| now.duration_since(*at) < self.ttl);
        }
        routers.insert(router.id.clone(), (now, router.clone()));
    }
}

#[async_trait::async_trait]
impl RouterDirectory for CachedDirectory {
    async fn router(&self, id: &str) -> Result<Option<RouterInfo>, DirectoryError> {
        if let Some((at, router)) = self.routers.lock().expect("not poisoned").get(id) {
            if at.elapsed() < self.ttl {
                return Ok(Some(router.clone()));
            }
        }
        // A router that does not exist is not remembered: it may be created next.
        let router = self.inner.router(id).await?;
        if let Some(r) = &router {
            self.keep(r);
        }
        Ok(router)
    }

    /// Always read fresh: a listing is what the router's owner sees of Neutron right now.
    async fn routers_of(
        &self,
        project_id: Option<&str>,
    ) -> Result<Vec<RouterSummary>, DirectoryError> {
        self.inner.routers_of(project_id).await
    }

    async fn routers_serving(
        &self,
        ip: Ipv4Addr,
        project_id: Option<&str>,
    ) -> Result<Vec<RouterInfo>, DirectoryError> {
        let routers = self.inner.routers_serving(ip, project_id).await?;
        for r in &routers {
            self.keep(r);
        }
        Ok(routers)
    }

    async fn routers_on_subnets(
        &self,
        subnet_ids: &[String],
    ) -> Result<Option<Vec<String>>, DirectoryError> {
        self.inner.routers_on_subnets(subnet_ids).await
    }

    fn knows_ports(&self) -> bool {
        self.inner.knows_ports()
    }

    async fn port(&self, id: &str) -> Result<Option<PortInfo>, DirectoryError> {
        self.inner.port(id).await
    }

    async fn ports_with_address(
        &self,
        ip: Ipv4Addr,
        project_id: Option<&str>,
    ) -> Result<Vec<PortInfo>, DirectoryError> {
        self.inner.ports_with_address(ip, project_id).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Counts the router lookups it answers.
    struct Counting {
        routers: AtomicUsize,
        gateway: Mutex<Option<Ipv4Addr>>,
    }

    #[async_trait::async_trait]
    impl RouterDirectory for Counting {
        async fn router(&self, id: &str) -> Result<Option<RouterInfo>, DirectoryError> {
            self.routers.fetch_add(1, Ordering::SeqCst);
            Ok((id == "r1").then(|| RouterInfo {
                id: id.into(),
                name: String::new(),
                project_id: Some("p1".into()),
                gateway_ip: *self.gateway.lock().unwrap(),
                distributed: false,
                subnets: vec![],
                subnet_ids: vec![],
            }))
        }
        async fn routers_of(&self, _: Option<&str>) -> Result<Vec<RouterSummary>, DirectoryError> {
            Ok(vec![])
        }
        async fn routers_serving(
            &self,
            _: Ipv4Addr,
            _: Option<&str>,
        ) -> Result<Vec<RouterInfo>, DirectoryError> {
            Ok(vec![])
        }
        fn knows_ports(&self) -> bool {
            true
        }
        async fn port(&self, _: &str) -> Result<Option<PortInfo>, DirectoryError> {
            Ok(None)
        }
        async fn ports_with_address(
            &self,
            _: Ipv4Addr,
            _: Option<&str>,
        ) -> Result<Vec<PortInfo>, DirectoryError> {
            Ok(vec![])
        }
    }

    #[tokio::test]
    async fn routers_are_kept_for_the_ttl_and_dropped_when_neutron_says_so() {
        let inner = Arc::new(Counting {
            routers: AtomicUsize::new(0),
            gateway: Mutex::new(Some("203.0.113.10".parse().unwrap())),
        });
        let cache = CachedDirectory::new(inner.clone(), Duration::from_secs(60));
        for _ in 0..3 {
            assert!(cache.router("r1").await.unwrap().is_some());
        }
        assert_eq!(inner.routers.load(Ordering::SeqCst), 1);
        // Unknown routers are asked for every time.
        assert!(cache.router("r9").await.unwrap().is_none());
        assert!(cache.router("r9").await.unwrap().is_none());
        assert_eq!(inner.routers.load(Ordering::SeqCst), 3);
        // The gateway is removed in Neutron, which notifies: the next read sees it.
        *inner.gateway.lock().unwrap() = None;
        cache.forget_all();
        assert_eq!(cache.router("r1").await.unwrap().unwrap().gateway_ip, None);
        assert_eq!(inner.routers.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_zero_ttl_keeps_nothing() {
        let inner = Arc::new(Counting {
            routers: AtomicUsize::new(0),
            gateway: Mutex::new(None),
        });
        let cache = CachedDirectory::new(inner.clone(), Duration::ZERO);
        cache.router("r1").await.unwrap();
        cache.router("r1").await.unwrap();
        assert_eq!(inner.routers.load(Ordering::SeqCst), 2);
    }
}
