//! Captures the audit events logged on the current thread, for tests.

use std::io::Write;
use std::sync::{Arc, Mutex};

use tracing::subscriber::DefaultGuard;
use tracing_subscriber::fmt::MakeWriter;

use crate::service::audit::TARGET;

/// The audit lines logged while the guard of [`capture`] lives.
#[derive(Clone, Default)]
pub struct AuditLog(Arc<Mutex<Vec<u8>>>);

impl AuditLog {
    /// One line per event, as operators see them.
    pub fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().expect("not poisoned"))
            .lines()
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

/// Records audit events on this thread (a current-thread runtime's tasks included) until the
/// guard is dropped.
pub fn capture() -> (AuditLog, DefaultGuard) {
    let log = AuditLog::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!("{TARGET}=info")))
        .finish();
    (log, tracing::subscriber::set_default(subscriber))
}
