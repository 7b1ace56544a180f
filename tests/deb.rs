//! The Debian package (`scripts/build-deb`) on this machine: its files, modes and conffiles,
//! `dpkg -i` (refused over `scripts/praas-install`, and the other way round), the binary, the
//! user, the directories and units that `systemd-analyze verify` accepts, the roles finding
//! `/etc/praas/praas.conf` by default, an edited conffile kept across a reinstall and an
//! upgrade, `dpkg -r` keeping configuration and state and `dpkg -P` removing everything.
//!
//! As root, on a machine where PRaaS is not installed (no package `praas`, no `/etc/praas`,
//! no user `praas`...): the test leaves the machine as it found it, also when it fails. Otherwise
//! it prints one line and skips, and under CI it fails instead. `PRAAS_DEB` names a package
//! already built; else the test runs `scripts/build-deb` (a release build).

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use praas::testbed::simnode::{kernel_tests_enabled, skipped};

const TEST: &str = "the_package_installs_upgrades_keeps_conffiles_and_purges";

const UNITS: [&str; 4] = [
    "praas-pat-agent.service",
    "praas-monitor-agent.service",
    "praas-server.service",
    "praas-agent.service",
];

/// What the package, its scripts or `scripts/praas-install` make: none may be here before.
const MADE: [&str; 9] = [
    "/usr/bin/praas",
    "/usr/share/man/man1/praas.1.gz",
    "/etc/praas",
    "/var/lib/praas",
    "/var/log/praas",
    "/etc/logrotate.d/praas",
    "/usr/local/bin/praas",
    "/usr/local/lib/praas",
    "/usr/local/share/doc/praas",
];

/// Where deb-systemd-helper and systemctl keep their links and state: as found, after a purge.
const SYSTEMD_STATE: [&str; 3] = [
    "/etc/systemd/system",
    "/var/lib/systemd/deb-systemd-helper-enabled",
    "/var/lib/systemd/deb-systemd-helper-masked",
];

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd` without standard input (dpkg must not ask) and returns what it said.
fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// Runs `cmd`, which must succeed, and returns its output.
fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed:\n{}", text(&out));
    text(&out)
}

fn dpkg(args: &[&str]) -> Command {
    let mut cmd = Command::new("dpkg");
    cmd.args(args);
    cmd
}

/// The package's state in dpkg's database (`installed`, `config-files`...), None when dpkg
/// does not know it.
fn package_status() -> Option<String> {
    let out = run(Command::new("dpkg-query").args(["-W", "-f", "${db:Status-Status}", "praas"]));
    let status = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !status.is_empty() && status != "not-installed").then_some(status)
}

fn account(database: &str) -> Option<Vec<String>> {
    let out = run(Command::new("getent").args([database, "praas"]));
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .split(':')
            .map(String::from)
            .collect()
    })
}

/// Every path under the directories of `SYSTEMD_STATE`, with where a link points.
fn systemd_state() -> BTreeSet<String> {
    fn walk(dir: &Path, into: &mut BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let link = std::fs::read_link(&path).ok();
            into.insert(format!("{} -> {link:?}", path.display()));
            if link.is_none() && path.is_dir() {
                walk(&path, into);
            }
        }
    }
    let mut state = BTreeSet::new();
    for dir in SYSTEMD_STATE {
        walk(Path::new(dir), &mut state);
    }
    state
}

/// Why this machine cannot host the test, if it cannot: PRaaS in any form already here.
fn already_here() -> Option<String> {
    if let Some(status) = package_status() {
        return Some(format!("a package praas is on this machine ({status})"));
    }
    let units = UNITS.iter().flat_map(|u| {
        [
            format!("/etc/systemd/system/{u}"),
            format!("/usr/lib/systemd/system/{u}"),
        ]
    });
    let mut found: Vec<String> = MADE
        .iter()
        .map(|p| p.to_string())
        .chain(units)
        .filter(|p| Path::new(p).symlink_metadata().is_ok())
        .collect();
    if account("passwd").is_some() {
        found.push("the user praas".into());
    }
    if account("group").is_some() {
        found.push("the group praas".into());
    }
    (!found.is_empty()).then(|| format!("PRaaS is on this machine: {}", found.join(", ")))
}

/// The package: `PRAAS_DEB`, else built by `scripts/build-deb`.
fn package() -> PathBuf {
    if let Some(deb) = std::env::var_os("PRAAS_DEB") {
        return PathBuf::from(deb);
    }
    let mut build = Command::new(repo("scripts/build-deb"));
    // What cargo sets for a test describes this test, not the package's build, and ring's
    // build script reruns when CARGO_MANIFEST_DIR changes: the release build would be redone.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if ["CARGO_PKG_", "CARGO_BIN_", "CARGO_MANIFEST_"]
            .iter()
            .any(|p| name.starts_with(p))
            || [
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
            ]
            .contains(&name.as_ref())
        {
            build.env_remove(name.as_ref());
        }
    }
    let out = run(build.stderr(Stdio::inherit()));
    assert!(out.status.success(), "scripts/build-deb failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().expect("build-deb names the package"))
}

/// Undoes what the test did to the machine, whatever happened: purges the package and what
/// `scripts/praas-install` installed, and removes the test's own files.
struct Cleanup {
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if package_status().is_some() {
            let _ = run(&mut dpkg(&["--purge", "praas"]));
        }
        if Path::new("/usr/local/lib/praas/installed").exists() {
            let _ = run(Command::new(repo("scripts/praas-uninstall")).arg("--purge"));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn mode_and_group(path: &str) -> (u32, u32) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (meta.permissions().mode() & 0o7777, meta.gid())
}

/// `dpkg-deb -c`: (path, mode, owner/group) of every entry that is not a directory.
fn contents(deb: &Path) -> Vec<(String, String, String)> {
    ok(Command::new("dpkg-deb").arg("-c").arg(deb))
        .lines()
        .filter(|l| !l.starts_with('d'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f[5].trim_start_matches('.').to_string();
            (path, f[0].to_string(), f[1].to_string())
        })
        .collect()
}

#[test]
fn the_package_installs_upgrades_keeps_conffiles_and_purges() {
    if !kernel_tests_enabled(TEST) {
        return;
    }
    if let Some(reason) = already_here() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{TEST}: CI must run it on a machine without PRaaS: {reason}");
        }
        skipped(
            TEST,
            &format!("{reason}; the test installs and purges PRaaS"),
        );
        return;
    }
    let before = systemd_state();
    let cleanup = Cleanup {
        dir: std::env::temp_dir().join(format!("praas-deb-{}", uuid::Uuid::new_v4())),
    };
    let dir = &cleanup.dir;
    std::fs::create_dir_all(dir).unwrap();
    let deb = package();
    let deb_str = deb.to_str().unwrap();
    let version = env!("CARGO_PKG_VERSION");

    // What the package holds: exactly these files, with these modes, all root's (0/0).
    let mut files = contents(&deb);
    files.sort();
    let mut expected: Vec<(String, String, String)> = [
        ("/usr/bin/praas", "-rwxr-xr-x"),
        ("/etc/praas/praas.conf", "-rw-r-----"),
        ("/etc/praas/clouds.yaml", "-rw-r-----"),
        ("/etc/logrotate.d/praas", "-rw-r--r--"),
        ("/usr/share/doc/praas/README.md", "-rw-r--r--"),
        ("/usr/share/doc/praas/operations.md", "-rw-r--r--"),
        ("/usr/share/doc/praas/api.md", "-rw-r--r--"),
        ("/usr/share/doc/praas/design.md", "-rw-r--r--"),
        ("/usr/share/doc/praas/copyright", "-rw-r--r--"),
        ("/usr/share/man/man1/praas.1.gz", "-rw-r--r--"),
        ("/usr/share/bash-completion/completions/praas", "-rw-r--r--"),
        ("/usr/share/zsh/vendor-completions/_praas", "-rw-r--r--"),
        (
            "/usr/share/fish/vendor_completions.d/praas.fish",
            "-rw-r--r--",
        ),
    ]
    .into_iter()
    .map(|(p, m)| (p.to_string(), m.to_string()))
    .chain(UNITS.iter().map(|u| {
        (
            format!("/usr/lib/systemd/system/{u}"),
            "-rw-r--r--".to_string(),
        )
    }))
    .map(|(p, m)| (p, m, "0/0".to_string()))
    .collect();
    expected.sort();
    assert_eq!(files, expected, "the package's files");

    let fields = ok(Command::new("dpkg-deb").args(["-f", deb_str]).args([
        "Package",
        "Version",
        "Depends",
        "Recommends",
    ]));
    assert!(fields.contains("Package: praas\n"), "{fields}");
    assert!(
        fields.contains(&format!("Version: {version}-1\n")),
        "{fields}"
    );
    let depends = fields
        .lines()
        .find_map(|l| l.strip_prefix("Depends: "))
        .unwrap();
    for needed in ["libc6", "libnftables1", "passwd", "init-system-helpers"] {
        assert!(
            depends.contains(needed),
            "Depends: {depends} lacks {needed}"
        );
    }
    assert!(fields.contains("Recommends: iptables"), "{fields}");

    // The control part: conffiles, and maintainer scripts that stop the units on removal and
    // restart those that run on upgrade (what systemd, when it is PID 1, is asked to do).
    let control = dir.join("control");
    std::fs::create_dir_all(&control).unwrap();
    let mut tarfile = Command::new("dpkg-deb")
        .args(["--ctrl-tarfile", deb_str])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let untarred = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&control)
        .stdin(tarfile.stdout.take().unwrap())
        .status()
        .unwrap();
    assert!(tarfile.wait().unwrap().success() && untarred.success());
    let conffiles: BTreeSet<String> = std::fs::read_to_string(control.join("conffiles"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let expected: BTreeSet<String> = [
        "/etc/praas/praas.conf",
        "/etc/praas/clouds.yaml",
        "/etc/logrotate.d/praas",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(conffiles, expected);
    let prerm = std::fs::read_to_string(control.join("prerm")).unwrap();
    for unit in UNITS {
        assert!(
            prerm
                .lines()
                .any(|l| l.contains("deb-systemd-invoke stop") && l.contains(unit)),
            "prerm does not stop {unit}:\n{prerm}"
        );
    }
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(postinst.contains("systemctl --system daemon-reload"));
    for unit in UNITS {
        assert!(
            postinst
                .lines()
                .any(|l| l.contains("deb-systemd-invoke try-restart") && l.contains(unit)),
            "an upgrade does not restart {unit}:\n{postinst}"
        );
        assert!(
            !postinst
                .lines()
                .any(|l| l.contains("deb-systemd-invoke start") && l.contains(unit)),
            "postinst starts {unit}"
        );
    }

    // Over scripts/praas-install, dpkg -i refuses and installs nothing.
    ok(Command::new(repo("scripts/praas-install"))
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_praas")));
    let refused = run(&mut dpkg(&["-i", deb_str]));
    assert!(!refused.status.success(), "installed over praas-install");
    assert!(
        text(&refused).contains("remove it first with 'scripts/praas-uninstall'"),
        "{}",
        text(&refused)
    );
    assert_eq!(package_status(), None);
    assert!(!Path::new("/usr/bin/praas").exists());
    ok(Command::new(repo("scripts/praas-uninstall")).arg("--purge"));
    assert_eq!(already_here(), None, "praas-uninstall --purge left PRaaS");

    // Installed: the binary, the user, the directories, the configuration's group; no unit
    // enabled.
    let said = ok(&mut dpkg(&["-i", deb_str]));
    assert!(said.contains("no unit is enabled or started"), "{said}");
    assert_eq!(package_status().as_deref(), Some("installed"));
    let out = ok(Command::new("/usr/bin/praas").arg("--version"));
    assert_eq!(out.trim(), format!("praas {version}"));
    let user = account("passwd").expect("the user praas");
    assert_eq!(user[5], "/var/lib/praas");
    assert_eq!(user[6], "/usr/sbin/nologin");
    let gid: u32 = account("group").expect("the group praas")[2]
        .parse()
        .unwrap();
    assert_eq!(user[3], gid.to_string(), "the user's group is praas");
    for (path, mode) in [
        ("/etc/praas/praas.conf", 0o640),
        ("/etc/praas/clouds.yaml", 0o640),
        ("/var/lib/praas", 0o2770),
        ("/var/log/praas", 0o2770),
    ] {
        assert_eq!(mode_and_group(path), (mode, gid), "{path}");
    }
    let wants = Path::new("/etc/systemd/system/multi-user.target.wants");
    for unit in UNITS {
        assert!(Path::new("/usr/lib/systemd/system").join(unit).exists());
        assert!(
            wants.join(unit).symlink_metadata().is_err(),
            "{unit} enabled"
        );
    }

    // The units, as installed, are accepted by systemd and run the package's binary.
    let units: Vec<String> = UNITS
        .iter()
        .map(|u| format!("/usr/lib/systemd/system/{u}"))
        .collect();
    for unit in &units {
        let text = std::fs::read_to_string(unit).unwrap();
        assert!(text.contains("ExecStart=/usr/bin/praas "), "{unit}");
        assert!(
            text.contains(" --config-file /etc/praas/praas.conf\n"),
            "{unit}"
        );
    }
    let verify = run(Command::new("systemd-analyze").arg("verify").args(&units));
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        text(&verify)
    );

    // The roles' user reads /etc/praas/praas.conf by default and writes /var/lib/praas.
    let as_praas = |args: &[&str]| {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "praas", "--", "/usr/bin/praas"]).args(args);
        cmd
    };
    ok(&mut as_praas(&["db-sync"]));
    assert!(Path::new("/var/lib/praas/praas.db").exists());

    // scripts/praas-install and praas-uninstall refuse while the package is here.
    let refused = run(Command::new(repo("scripts/praas-install"))
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_praas")));
    assert!(!refused.status.success(), "praas-install over the package");
    assert!(
        text(&refused).contains("the Debian package praas is on this machine"),
        "{}",
        text(&refused)
    );
    assert!(!Path::new("/usr/local/bin/praas").exists());
    let refused = run(Command::new(repo("scripts/praas-uninstall")).arg("--purge"));
    assert!(
        !refused.status.success(),
        "praas-uninstall under the package"
    );
    assert!(
        text(&refused).contains("'dpkg -r praas'"),
        "{}",
        text(&refused)
    );
    assert!(Path::new("/etc/praas/clouds.yaml").exists() && account("passwd").is_some());

    // An edited conffile survives a reinstall...
    let conf = "/etc/praas/praas.conf";
    let shipped = include_str!("../etc/praas.conf");
    let edited =
        format!("{shipped}\n[database]\nconnection = sqlite:////var/lib/praas/edited.db\n");
    std::fs::write(conf, &edited).unwrap();
    ok(&mut dpkg(&["-i", deb_str]));
    assert_eq!(std::fs::read_to_string(conf).unwrap(), edited);
    assert!(!Path::new("/etc/praas/praas.conf.dpkg-dist").exists());

    // ...and an upgrade to a package that ships a changed one: kept, with the new one beside
    // it as .dpkg-dist (--force-confold: no question asked), while an unedited conffile is
    // replaced and keeps the group praas.
    let tree = dir.join("tree");
    ok(Command::new("dpkg-deb").args(["-R", deb_str]).arg(&tree));
    let newer = "# shipped by the newer package\n";
    let mut md5sums = String::new();
    for file in ["etc/praas/praas.conf", "etc/praas/clouds.yaml"] {
        let path = tree.join(file);
        let old = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{old}{newer}")).unwrap();
    }
    // cargo-deb writes no md5sums (dpkg computes them on unpack); one written later must match.
    if let Ok(sums) = std::fs::read_to_string(tree.join("DEBIAN/md5sums")) {
        for line in sums.lines() {
            let file = line.split_whitespace().nth(1).unwrap();
            let sum = ok(Command::new("md5sum").arg(tree.join(file)));
            md5sums.push_str(&format!(
                "{}  {file}\n",
                sum.split_whitespace().next().unwrap()
            ));
        }
        std::fs::write(tree.join("DEBIAN/md5sums"), md5sums).unwrap();
    }
    let control_file = tree.join("DEBIAN/control");
    let fields = std::fs::read_to_string(&control_file).unwrap();
    let fields = fields.replace(
        &format!("Version: {version}-1\n"),
        &format!("Version: {version}-2\n"),
    );
    std::fs::write(&control_file, fields).unwrap();
    let upgrade = dir.join("praas-upgrade.deb");
    ok(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "-z1", "-b"])
        .arg(&tree)
        .arg(&upgrade));
    ok(dpkg(&["-i", "--force-confold"]).arg(&upgrade));
    let fields = ok(Command::new("dpkg-query").args(["-W", "-f", "${Version}", "praas"]));
    assert_eq!(fields, format!("{version}-2"));
    assert_eq!(std::fs::read_to_string(conf).unwrap(), edited);
    assert!(std::fs::read_to_string("/etc/praas/praas.conf.dpkg-dist")
        .unwrap()
        .ends_with(newer));
    assert!(std::fs::read_to_string("/etc/praas/clouds.yaml")
        .unwrap()
        .ends_with(newer));
    assert_eq!(mode_and_group("/etc/praas/clouds.yaml"), (0o640, gid));
    assert!(Path::new("/var/lib/praas/praas.db").exists());
    // The edited configuration is the one the roles read.
    ok(&mut as_praas(&["db-sync"]));
    assert!(Path::new("/var/lib/praas/edited.db").exists());

    // dpkg -r: the program and units go; configuration, state, logs and the user stay.
    ok(&mut dpkg(&["-r", "praas"]));
    assert_eq!(package_status().as_deref(), Some("config-files"));
    assert!(!Path::new("/usr/bin/praas").exists());
    for unit in &units {
        assert!(!Path::new(unit).exists(), "{unit} left");
    }
    assert_eq!(std::fs::read_to_string(conf).unwrap(), edited);
    for kept in [
        "/etc/praas/clouds.yaml",
        "/etc/logrotate.d/praas",
        "/var/lib/praas/praas.db",
        "/var/lib/praas/edited.db",
        "/var/log/praas",
    ] {
        assert!(Path::new(kept).exists(), "{kept} removed by dpkg -r");
    }
    assert!(account("passwd").is_some(), "dpkg -r removed the user");
    // The removal masks the units (deb-systemd-helper, until a purge or a reinstall): links
    // to /dev/null, which the preinst tells from scripts/praas-install's unit files.
    for unit in UNITS {
        let mask = Path::new("/etc/systemd/system").join(unit);
        assert_eq!(
            std::fs::read_link(&mask).ok(),
            Some("/dev/null".into()),
            "{unit}"
        );
    }
    ok(dpkg(&["-i"]).arg(&upgrade));
    assert_eq!(package_status().as_deref(), Some("installed"));
    assert_eq!(std::fs::read_to_string(conf).unwrap(), edited);
    for unit in UNITS {
        let mask = Path::new("/etc/systemd/system").join(unit);
        assert!(mask.symlink_metadata().is_err(), "{unit} still masked");
    }
    ok(&mut as_praas(&["--version"]));
    ok(&mut dpkg(&["-r", "praas"]));

    // dpkg -P: everything, and the machine is as the test found it.
    ok(&mut dpkg(&["-P", "praas"]));
    assert_eq!(package_status(), None);
    assert_eq!(already_here(), None, "left behind by dpkg -P");
    assert_eq!(
        systemd_state(),
        before,
        "systemd's links and state after dpkg -P"
    );
    drop(cleanup);
}
