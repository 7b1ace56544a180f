//! Shared helpers of the integration tests.
#![allow(dead_code)]

use std::net::Ipv4Addr;

use praas::dataplane::{Forward, Protocol};

pub use praas::simnode::kernel_tests_enabled;

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
