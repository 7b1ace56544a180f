pub mod dataplane;
pub mod simnode;
