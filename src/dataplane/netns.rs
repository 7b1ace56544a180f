//! Entering network namespaces in-process.
//!
//! `setns(2)` switches the namespace of the calling *thread* only. Switching a thread of the
//! async runtime would leak the namespace into unrelated tasks, so the work runs on a short-lived
//! thread of its own that enters the namespace and ends with it; nothing is spawned as a process.
//! Sockets keep the namespace they were created in, so a netlink socket opened here keeps
//! talking to the namespace after the thread is gone.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

use super::{DataplaneError, RouterNamespace};

/// Where `ip netns` mounts named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Path of a named namespace.
pub fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Whether a named namespace exists on this node.
pub fn exists(name: &str) -> bool {
    path_of(name).exists()
}

/// The inode of the namespace mounted as `namespace`: another one once the namespace has been
/// deleted and created again under the same name.
pub fn inode(namespace: &RouterNamespace) -> Result<u64, DataplaneError> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path_of(namespace.name()))
        .map(|m| m.ino())
        .map_err(|source| DataplaneError::Namespace {
            namespace: namespace.to_string(),
            source,
        })
}

/// Runs `f` on a thread inside `namespace` and returns its result.
pub fn run_in<T, F>(namespace: &RouterNamespace, f: F) -> Result<T, DataplaneError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    run_in_path(&path_of(namespace.name()), f).map_err(|source| DataplaneError::Namespace {
        namespace: namespace.name().to_string(),
        source,
    })
}

/// Runs `f` on a thread inside the namespace mounted at `path`.
pub fn run_in_path<T, F>(path: &Path, f: F) -> io::Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    // Open before spawning so a missing namespace is reported without a thread.
    let file = File::open(path)?;
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("netns".into())
            .spawn_scoped(scope, move || {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                Ok(f())
            })?
            .join()
            .map_err(|_| io::Error::other("thread inside the namespace panicked"))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_namespace_is_an_error_naming_it() {
        let ns = RouterNamespace::named("praas-test-does-not-exist");
        let err = run_in(&ns, || ()).unwrap_err();
        assert!(
            err.to_string().contains("praas-test-does-not-exist"),
            "{err}"
        );
    }
}
