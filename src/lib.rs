pub mod dataplane;
pub mod process;
pub mod simnode;
pub mod store;
