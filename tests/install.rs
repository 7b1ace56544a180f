//! `scripts/praas-install` and `scripts/praas-uninstall` into a temporary root: the layout of
//! the original (binary, `praas.conf`, `clouds.yaml`, `/var/lib/praas`, `/var/log/praas`, the
//! units), units that `systemd-analyze verify` accepts, an edited configuration kept across a
//! reinstall and an uninstall, and `--purge` removing everything.
//!
//! As root (the user `praas` and the group ownership need it); otherwise it prints one line and
//! skips, and under CI it fails instead.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use praas::testbed::simnode::kernel_tests_enabled;

const UNITS: [&str; 4] = [
    "praas-pat-agent.service",
    "praas-monitor-agent.service",
    "praas-server.service",
    "praas-agent.service",
];

/// A temporary root holding a copy of this machine's account database (for `useradd
/// --root`) and systemd's own units (for `systemd-analyze verify --root`), removed on drop.
struct TempRoot(PathBuf);

impl TempRoot {
    fn new() -> TempRoot {
        let dir = std::env::temp_dir().join(format!("praas-install-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        for f in ["passwd", "group", "shadow", "gshadow"] {
            std::fs::copy(Path::new("/etc").join(f), dir.join("etc").join(f)).unwrap();
        }
        std::fs::create_dir_all(dir.join("usr/lib/systemd")).unwrap();
        let copied = Command::new("cp")
            .args(["-r", "/usr/lib/systemd/system"])
            .arg(dir.join("usr/lib/systemd/"))
            .status()
            .unwrap();
        assert!(copied.success());
        TempRoot(dir)
    }

    fn path(&self, p: &str) -> PathBuf {
        self.0.join(p.trim_start_matches('/'))
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn script(name: &str, root: &TempRoot, args: &[&str]) -> String {
    let out = Command::new(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scripts")
            .join(name),
    )
    .arg("--root")
    .arg(&root.0)
    .args(args)
    .output()
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{name} {args:?} failed:\n{text}");
    text
}

fn praas_gid(root: &TempRoot) -> Option<u32> {
    std::fs::read_to_string(root.path("/etc/group"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("praas:"))
        .and_then(|rest| rest.split(':').nth(1))
        .and_then(|gid| gid.parse().ok())
}

#[test]
fn install_verify_reinstall_and_uninstall_into_a_temporary_root() {
    if !kernel_tests_enabled("install_verify_reinstall_and_uninstall_into_a_temporary_root") {
        return;
    }
    let root = TempRoot::new();
    let binary = env!("CARGO_BIN_EXE_praas");
    let said = script("praas-install", &root, &["--binary", binary]);
    assert!(said.contains("installed praas "), "{said}");

    // The original's layout, under /etc/praas for the configuration.
    let installed = root.path("/usr/local/bin/praas");
    let version = Command::new(&installed).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("praas "));
    let shipped = include_str!("../etc/praas.conf");
    assert_eq!(
        std::fs::read_to_string(root.path("/etc/praas/praas.conf")).unwrap(),
        shipped
    );
    let gid = praas_gid(&root).expect("the group praas in the root's /etc/group");
    for (path, mode) in [
        ("/etc/praas/praas.conf", 0o640),
        ("/etc/praas/clouds.yaml", 0o640),
        ("/var/lib/praas", 0o2770),
        ("/var/log/praas", 0o2770),
    ] {
        let meta = std::fs::metadata(root.path(path)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, mode, "{path}");
        assert_eq!(meta.gid(), gid, "{path} belongs to the group praas");
    }
    let passwd = std::fs::read_to_string(root.path("/etc/passwd")).unwrap();
    assert!(
        passwd.lines().any(|l| l.starts_with("praas:")),
        "the user praas"
    );
    let rotate = std::fs::read_to_string(root.path("/etc/logrotate.d/praas")).unwrap();
    assert!(rotate.contains("/var/log/praas/*.log"), "{rotate}");

    // The units: pointing at the installed binary, and accepted by systemd.
    let units: Vec<PathBuf> = UNITS
        .iter()
        .map(|u| root.path(&format!("/etc/systemd/system/{u}")))
        .collect();
    for unit in &units {
        let text = std::fs::read_to_string(unit).unwrap();
        assert!(
            text.contains("ExecStart=/usr/local/bin/praas "),
            "{}",
            unit.display()
        );
        assert!(text.contains("Restart=on-failure"));
        assert!(text.contains("Type=notify"));
    }
    let server = std::fs::read_to_string(&units[2]).unwrap();
    assert!(
        server.contains("CapabilityBoundingSet=\n"),
        "the server has none"
    );
    let agent = std::fs::read_to_string(&units[3]).unwrap();
    assert!(agent.contains("CapabilityBoundingSet=CAP_NET_ADMIN CAP_SYS_ADMIN\n"));
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.0.display()))
        .args(&units)
        .output()
        .expect("systemd-analyze (Debian's systemd package)");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // An edited configuration survives a reinstall (the shipped one beside it) and an
    // uninstall; state and logs stay too.
    let conf = root.path("/etc/praas/praas.conf");
    std::fs::write(&conf, format!("{shipped}\n[praas]\nport_app = 3100\n")).unwrap();
    std::fs::write(root.path("/var/lib/praas/praas.db"), "a database").unwrap();
    let said = script("praas-install", &root, &["--binary", binary]);
    assert!(said.contains("kept your /etc/praas/praas.conf"), "{said}");
    assert!(std::fs::read_to_string(&conf).unwrap().contains("3100"));
    assert_eq!(
        std::fs::read_to_string(root.path("/etc/praas/praas.conf.dist")).unwrap(),
        shipped
    );
    let said = script("praas-uninstall", &root, &[]);
    assert!(
        said.contains(
            "kept (--purge removes them): /etc/praas/praas.conf /var/lib/praas /var/log/praas"
        ),
        "{said}"
    );
    assert!(!installed.exists() && !units[0].exists());
    assert!(
        !root.path("/etc/praas/clouds.yaml").exists(),
        "unedited: removed"
    );
    assert!(!root.path("/etc/praas/praas.conf.dist").exists());
    assert!(!root.path("/etc/logrotate.d/praas").exists());
    assert!(conf.exists() && root.path("/var/lib/praas/praas.db").exists());

    // --purge takes what was kept, and the user.
    script("praas-uninstall", &root, &["--purge"]);
    for gone in [
        "/etc/praas",
        "/var/lib/praas",
        "/var/log/praas",
        "/usr/local/lib/praas",
    ] {
        assert!(!root.path(gone).exists(), "{gone} left behind");
    }
    assert_eq!(praas_gid(&root), None);
    let passwd = std::fs::read_to_string(root.path("/etc/passwd")).unwrap();
    assert!(!passwd.lines().any(|l| l.starts_with("praas:")));
}
