//! Shared helpers of the integration tests.
#![allow(dead_code)]

use std::net::Ipv4Addr;

use praas::dataplane::{Forward, Protocol};

/// True when the test may touch the kernel. Outside root it prints one line saying why the test
/// is skipped; under CI (`CI=true`, which runs as root) a missing privilege is a failure, so the
/// real-kernel tier can never pass by skipping.
pub fn kernel_tests_enabled(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: CI must run the kernel tests as root");
    }
    eprintln!("skipped {test}: needs root (network namespaces and netfilter)");
    false
}

pub fn forward(id: &str, protocol: Protocol, ext: &str, vm: Ipv4Addr, int: &str) -> Forward {
    Forward {
        id: id.into(),
        protocol,
        external_ip: praas::simnode::GATEWAY_IP,
        external_ports: ext.parse().unwrap(),
        internal_ip: vm,
        internal_ports: int.parse().unwrap(),
        allowed_cidrs: vec![],
        masquerade: false,
    }
}
