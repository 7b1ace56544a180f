//! PRaaS: port forwarding of OpenStack routers' gateway addresses (PAT), as a library under the
//! `praas` binary. The roles and where they live are listed in `docs/design.md`.

pub mod agent;
pub mod api;
pub mod changes;
pub mod client;
pub mod config;
pub mod dataplane;
pub mod metrics;
pub mod model;
pub mod monitor;
pub mod openstack;
pub mod ovsdb;
pub mod placement;
pub mod process;
pub mod runtime;
pub mod service;
pub mod status;
pub mod store;
pub mod testbed;
pub mod util;
