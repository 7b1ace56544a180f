//! `praas demo --ovn` as `scripts/demo --ovn` runs it: on the one-chassis OVN of `scripts/ovn`
//! under the dev cloud's OVN Neutron (`PRAAS_CLOUD_OVN=1 scripts/dev-cloud up`), both already
//! running. The test reads what the demo printed (mappings ACTIVE, the load balancers in the
//! northbound database, the VMs seeing the client's address, new and established connections
//! failing after the deletion) and checks that it left nothing behind: no namespace, no
//! Neutron port, no load balancer.
//! Needs root, OVN and the dev cloud with its OVN Neutron; skipped with a reason otherwise (and
//! failed under CI).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use praas::testbed::ovn::{self, OvnEnv};
use serde_json::Value;

/// The dev cloud's state directory and resources.json, when its OVN Neutron answers.
fn ovn_cloud(test: &str) -> Option<(PathBuf, Value)> {
    let dir = PathBuf::from(
        std::env::var("PRAAS_CLOUD_DIR").unwrap_or_else(|_| "/var/tmp/praas-dev-cloud".into()),
    );
    let resources = std::fs::read_to_string(dir.join("resources.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok());
    let answers = |url: Option<&str>| {
        url.and_then(|u| u.split("://").nth(1))
            .map(|rest| rest.split('/').next().unwrap_or(rest).to_string())
            .is_some_and(|authority| std::net::TcpStream::connect(authority).is_ok())
    };
    let up = resources
        .as_ref()
        .is_some_and(|r| answers(r["keystone"].as_str()) && answers(r["ovn"]["neutron"].as_str()));
    if up {
        return Some((dir, resources.unwrap()));
    }
    let reason = format!(
        "no dev cloud with its OVN Neutron at {} (PRAAS_CLOUD_OVN=1 scripts/dev-cloud up)",
        dir.display()
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: CI must run the OVN demo: {reason}");
    }
    praas::testbed::simnode::skipped(test, &reason);
    None
}

/// Whether `scripts/ovn` runs (the OVN Neutron binds its ports to that chassis).
fn ovn_running(test: &str) -> bool {
    let running = Command::new(OvnEnv::script())
        .arg("status")
        .output()
        .is_ok_and(|o| o.status.success());
    if !running {
        let reason = "OVN is not running (scripts/ovn up)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: CI must run the OVN demo: {reason}");
        }
        praas::testbed::simnode::skipped(test, reason);
    }
    running
}

#[test]
fn the_ovn_demo_forwards_tcp_and_udp_through_ovn_then_cuts_them_and_leaves_nothing_behind() {
    const TEST: &str = "demo::ovn";
    if !ovn::tests_enabled(TEST) || !ovn_running(TEST) {
        return;
    }
    let Some((dir, resources)) = ovn_cloud(TEST) else {
        return;
    };
    let a = &resources["ovn"]["projects"]["a"];
    let router_id = a["router_id"].as_str().unwrap();
    let gateway = a["router_gateway_ip"].as_str().unwrap();

    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_praas"))
        .args(["demo", "--ovn", "--cloud-dir"])
        .arg(&dir)
        .env("PRAAS_LOG", "praas=warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its namespaces and Neutron ports carry its process id.
    let pid = child.id();
    let child = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&child.stdout);
    let err = String::from_utf8_lossy(&child.stderr);
    eprintln!(
        "{out}\n{err}\n{TEST}: the demo took {:?}",
        started.elapsed()
    );
    assert!(child.status.success(), "the demo failed: {err}");

    // What it showed.
    let client = out
        .lines()
        .find_map(|l| l.strip_prefix("From the client namespace ("))
        .and_then(|l| l.strip_suffix("):"))
        .expect("the client's address");
    let expect = [
        format!("tcp  {gateway}:4022 -> "),
        format!("udp  {gateway}:"),
        format!("name                : praas-{router_id}-tcp-"),
        format!("name                : praas-{router_id}-udp-"),
        format!("vips                : {{\"{gateway}:4022\"="),
        "options             : {ct_flush=\"true\"}".into(),
        format!("vm0 answered \"from={client} hello\""),
        format!("vm1 answered \"from={client} hello over udp\""),
        format!("a new connection to {gateway}:4022 fails"),
        "the established connection is cut".into(),
        "no answer (timed out)".into(),
        "Done;".into(),
    ];
    for e in &expect {
        assert!(out.contains(e.as_str()), "the demo did not show {e:?}");
    }
    assert_eq!(out.matches("  ACTIVE  ").count(), 2, "two ACTIVE mappings");
    // Attached to the router and to the tenant switch, then detached: the three listings after
    // the deletions are empty.
    let after = out
        .split("What OVN's northbound database holds now:")
        .nth(1)
        .expect("the listing after the deletions");
    assert_eq!(after.matches("  (none)").count(), 3, "{after}");

    // What it left: nothing of its own.
    let namespaces = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let prefix = format!("praas-ovn-{:05x}", pid & 0xfffff);
    assert!(
        !String::from_utf8_lossy(&namespaces.stdout).contains(&prefix),
        "a namespace of the demo is left"
    );
    let env = OvnEnv::start().unwrap();
    let ports = env
        .nbctl(&[
            "--bare",
            "--columns=external_ids",
            "list",
            "Logical_Switch_Port",
        ])
        .unwrap();
    assert!(
        !ports.contains(&format!("praas-demo-vm0-{pid}"))
            && !ports.contains(&format!("praas-demo-vm1-{pid}")),
        "a Neutron port of the demo is left"
    );
    let lbs = env
        .nbctl(&[
            "--bare",
            "--columns=name",
            "find",
            "Load_Balancer",
            &format!("external_ids:\"praas:router_id\"=\"{router_id}\""),
        ])
        .unwrap();
    assert!(lbs.trim().is_empty(), "load balancers are left: {lbs}");
}
