pub mod agent;
pub mod api;
pub mod config;
pub mod dataplane;
pub mod openstack;
pub mod process;
pub mod simnode;
pub mod store;
