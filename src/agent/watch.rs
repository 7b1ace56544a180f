//! When to look at the node again: every second, and at once when the namespace directory
//! changes.
//!
//! The agent checks the node (which router namespaces exist, and whether what it programmed is
//! still in each) on every wake-up. An inotify watch on the namespace directory (`/run/netns`,
//! where `ip netns add` creates a file and mounts the namespace on it) wakes it as soon as a
//! namespace is added or deleted, and once more shortly after, because the mount follows the
//! file's creation and a namespace is served only once it is mounted. The one-second tick
//! bounds how long a change behind our back (a flushed table) stays unrepaired, and is all that
//! is left where the directory cannot be watched.

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use inotify::{EventStream, Inotify, WatchMask};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tracing::{debug, warn};

/// How often every served namespace is checked, at the latest.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How long after a directory event the node is looked at once more (the namespace's mount
/// follows the creation of its file).
const SETTLE: Duration = Duration::from_millis(200);

/// Why the agent woke up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The periodic check.
    Tick,
    /// A namespace was added to or removed from the directory.
    Directory,
}

pub struct NamespaceWatch {
    events: Option<EventStream<Vec<u8>>>,
    tick: Interval,
    /// A look due soon after a directory event.
    settle: Option<Instant>,
}

impl NamespaceWatch {
    /// Watches `dir` (created if missing, as `ip netns` would); without a directory, or where
    /// it cannot be watched, only the tick wakes.
    pub fn new(dir: Option<&Path>) -> Self {
        let mut tick = tokio::time::interval(CHECK_INTERVAL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let events = dir.and_then(|dir| match watch(dir) {
            Ok(events) => Some(events),
            Err(e) => {
                warn!(dir = %dir.display(), error = %e,
                    "cannot watch the namespace directory; new namespaces are noticed within a second");
                None
            }
        });
        NamespaceWatch {
            events,
            tick,
            settle: None,
        }
    }

    /// Waits for the next reason to look at the node.
    pub async fn next(&mut self) -> Wake {
        let settle = self.settle;
        let settled = async move {
            match settle {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let event = async {
            match self.events.as_mut() {
                Some(events) => events.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = event => {
                match event {
                    Some(Ok(e)) => debug!(name = ?e.name, mask = ?e.mask, "namespace directory changed"),
                    Some(Err(e)) => warn!(error = %e, "reading namespace directory events"),
                    None => self.events = None,
                }
                self.settle = Some(Instant::now() + SETTLE);
                Wake::Directory
            }
            _ = settled => {
                self.settle = None;
                Wake::Tick
            }
            _ = self.tick.tick() => Wake::Tick,
        }
    }
}

fn watch(dir: &Path) -> std::io::Result<EventStream<Vec<u8>>> {
    std::fs::create_dir_all(dir)?;
    let inotify = Inotify::init()?;
    inotify.watches().add(
        dir,
        WatchMask::CREATE | WatchMask::DELETE | WatchMask::MOVED_FROM | WatchMask::MOVED_TO,
    )?;
    inotify.into_event_stream(vec![0; 4096])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_added_to_the_directory_wakes_at_once_and_again_after_settling() {
        let dir = std::env::temp_dir().join(format!("praas-watch-{}", uuid::Uuid::new_v4()));
        let mut watch = NamespaceWatch::new(Some(&dir));
        assert!(dir.is_dir(), "the directory is created like ip netns would");
        // The interval's first tick is immediate.
        assert_eq!(watch.next().await, Wake::Tick);
        let started = std::time::Instant::now();
        std::fs::write(dir.join("qrouter-r1"), "").unwrap();
        assert_eq!(watch.next().await, Wake::Directory);
        assert!(started.elapsed() < Duration::from_millis(500));
        assert_eq!(watch.next().await, Wake::Tick);
        let settled = started.elapsed();
        assert!(
            settled >= SETTLE && settled < CHECK_INTERVAL,
            "settle look after {settled:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn without_a_directory_the_tick_still_wakes() {
        let mut watch = NamespaceWatch::new(None);
        assert_eq!(watch.next().await, Wake::Tick);
        let started = std::time::Instant::now();
        assert_eq!(watch.next().await, Wake::Tick);
        assert!(started.elapsed() >= CHECK_INTERVAL - Duration::from_millis(50));
    }
}
