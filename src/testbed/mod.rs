//! What tests, benchmarks and the demo stand on instead of a real cloud or kernel: a simulated
//! network node in throwaway namespaces ([`simnode`]), an in-memory dataplane backend that
//! records its calls ([`fake_dataplane`]), fixed router and port facts ([`StaticDirectory`]),
//! a node whose namespaces the test decides ([`StaticPlacement`]) and a recorder of audit
//! events ([`audit`]).
//! Nothing in the product's roles uses these.

pub mod audit;
mod directory;
pub mod fake_dataplane;
mod placement;
pub mod simnode;

pub use directory::StaticDirectory;
pub use placement::{OwnNamespaces, StaticPlacement};
