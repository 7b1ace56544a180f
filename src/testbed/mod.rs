//! What tests, benchmarks and the demo stand on instead of a real cloud or kernel: a simulated
//! network node in throwaway namespaces ([`simnode`]), an in-memory dataplane backend that
//! records its calls ([`fake_dataplane`]), fixed router and port facts ([`StaticDirectory`]),
//! a node whose namespaces the test decides ([`StaticPlacement`]), a recorder of audit
//! events ([`audit`]), a private OVN northbound database ([`ovsdb_server`]) and a one-chassis
//! OVN with namespaces attached to it ([`ovn`]) and a router in it as Neutron writes it
//! ([`ovn_router`]).
//! Nothing in the product's roles uses these.

pub mod audit;
mod directory;
pub mod fake_dataplane;
pub mod ovn;
pub mod ovn_router;
pub mod ovsdb_server;
mod placement;
pub mod simnode;

pub use directory::StaticDirectory;
pub use placement::{OwnNamespaces, StaticPlacement};

/// A TCP port on loopback that was free a moment ago, for a process a test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on loopback")
}

/// `n` with thousands separated by commas, as the docs write counts (for benchmark tables).
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
