//! Validation of the tokens callers present, with a bounded in-memory cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;

use super::session::{Session, TokenInfo};
use super::OpenStackError;

/// Validates callers' tokens.
#[async_trait::async_trait]
pub trait TokenValidator: Send + Sync {
    /// Who `token` belongs to; `Ok(None)` when Keystone does not accept it. An error means
    /// Keystone could not be asked.
    async fn validate(&self, token: &str) -> Result<Option<TokenInfo>, OpenStackError>;
}

/// Validates against Keystone and remembers answers: a valid token until it expires, but no
/// longer than `ttl` (a revoked token is refused within `ttl`), an invalid one for a short
/// while. At most `capacity` tokens are remembered.
pub struct KeystoneTokens {
    session: Arc<Session>,
    ttl: Duration,
    capacity: usize,
    cache: Mutex<HashMap<String, (Option<TokenInfo>, Instant)>>,
}

/// How long a refused token is remembered as refused.
const NEGATIVE_TTL: Duration = Duration::from_secs(10);

impl KeystoneTokens {
    pub fn new(session: Arc<Session>, ttl: Duration, capacity: usize) -> Self {
        KeystoneTokens {
            session,
            ttl,
            capacity: capacity.max(1),
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, token: &str) -> Option<Option<TokenInfo>> {
        let cache = self.cache.lock().unwrap();
        let (info, until) = cache.get(token)?;
        (Instant::now() < *until && info.as_ref().is_none_or(|i| i.expires_at > Utc::now()))
            .then(|| info.clone())
    }

    fn remember(&self, token: &str, info: &Option<TokenInfo>) {
        let now = Instant::now();
        let until = match info {
            Some(i) => {
                let left = (i.expires_at - Utc::now()).to_std().unwrap_or_default();
                now + left.min(self.ttl)
            }
            None => now + NEGATIVE_TTL,
        };
        let mut cache = self.cache.lock().unwrap();
        if cache.len() >= self.capacity {
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= self.capacity {
                // Still full of live entries: drop the ones closest to their end.
                let mut ends: Vec<Instant> = cache.values().map(|(_, u)| *u).collect();
                ends.sort_unstable();
                let cut = ends[ends.len() / 2];
                cache.retain(|_, (_, until)| *until > cut);
            }
        }
        cache.insert(token.to_string(), (info.clone(), until));
    }
}

#[async_trait::async_trait]
impl TokenValidator for KeystoneTokens {
    async fn validate(&self, token: &str) -> Result<Option<TokenInfo>, OpenStackError> {
        if let Some(hit) = self.cached(token) {
            return Ok(hit);
        }
        let info = self.session.validate(token).await?;
        self.remember(token, &info);
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::openstack::session::tests::{fake_cloud_with, session};

    #[tokio::test]
    async fn answers_are_remembered_within_their_bounds() {
        let (base, counts) = fake_cloud_with(chrono::Duration::hours(1)).await;
        let asked = || counts.validations.load(Ordering::SeqCst);
        let tokens = KeystoneTokens::new(Arc::new(session(&base)), Duration::from_secs(300), 2);
        let info = tokens.validate("good-a").await.unwrap().unwrap();
        assert_eq!(
            (info.user_id.as_str(), info.project_id.as_deref()),
            ("user-of-good-a", Some("p1"))
        );
        assert_eq!(info.roles, vec!["member".to_string()]);
        tokens.validate("good-a").await.unwrap();
        assert_eq!(asked(), 1, "a valid token is asked about once");
        assert!(tokens.validate("bad").await.unwrap().is_none());
        assert!(tokens.validate("bad").await.unwrap().is_none());
        assert_eq!(asked(), 2, "a refusal is remembered too");
        // Full (2 entries): a third token makes room by dropping the ones closest to their end.
        tokens.validate("good-b").await.unwrap();
        assert!(tokens.cache.lock().unwrap().len() <= 2);

        // With no time to trust, every request asks Keystone.
        let (base, counts) = fake_cloud_with(chrono::Duration::hours(1)).await;
        let tokens = KeystoneTokens::new(Arc::new(session(&base)), Duration::ZERO, 10);
        tokens.validate("good-a").await.unwrap();
        tokens.validate("good-a").await.unwrap();
        assert_eq!(counts.validations.load(Ordering::SeqCst), 2);
    }
}
