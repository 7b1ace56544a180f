//! Records the audit events of a test binary, for tests.
//!
//! The recorder is the process's global subscriber, installed once: a subscriber set for one
//! thread only misses events whose call site another thread (a test running alongside) reached
//! first, since tracing caches per call site whether anyone listens. Tests running at the same
//! time all record here, so a test picks its own events by the ids of its mappings.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use tracing_subscriber::fmt::MakeWriter;

use crate::service::audit::TARGET;

/// Every audit line logged in this process since [`recorder`] was first called.
#[derive(Clone, Default)]
pub struct AuditLog(Arc<Mutex<Vec<u8>>>);

impl AuditLog {
    /// The lines naming any of `ids` (mapping ids), in the order they were logged.
    pub fn lines_about(&self, ids: &[&str]) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().expect("not poisoned"))
            .lines()
            .filter(|l| ids.iter().any(|id| l.contains(&format!("mapping={id}"))))
            .map(str::to_string)
            .collect()
    }
}

impl Write for AuditLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("not poisoned").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for AuditLog {
    type Writer = AuditLog;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The process's audit recorder, installed as the global subscriber on first use.
pub fn recorder() -> AuditLog {
    static LOG: OnceLock<AuditLog> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = AuditLog::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(log.clone())
            .with_ansi(false)
            .with_env_filter(tracing_subscriber::EnvFilter::new(format!("{TARGET}=info")))
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in a test binary that records audit events");
        log
    })
    .clone()
}
