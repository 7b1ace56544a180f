//! iptables backend (placeholder until the implementation lands).
use super::{Backend, Changes, DataplaneError, RouterNamespace, RuleSet};

pub struct IptablesBackend;

impl IptablesBackend {
    pub fn new() -> Self {
        IptablesBackend
    }
}

impl Default for IptablesBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl Backend for IptablesBackend {
    fn name(&self) -> &'static str {
        "iptables"
    }
    fn full_sync(&self, _: &RouterNamespace, _: &RuleSet) -> Result<(), DataplaneError> {
        unimplemented!("iptables backend")
    }
    fn update(&self, _: &RouterNamespace, _: &Changes) -> Result<(), DataplaneError> {
        unimplemented!("iptables backend")
    }
    fn read_back(&self, _: &RouterNamespace) -> Result<Option<RuleSet>, DataplaneError> {
        unimplemented!("iptables backend")
    }
    fn remove(&self, _: &RouterNamespace) -> Result<(), DataplaneError> {
        unimplemented!("iptables backend")
    }
}
