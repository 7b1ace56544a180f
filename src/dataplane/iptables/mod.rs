//! iptables backend: the original PRaaS chain layout, for sites that cannot use nftables.
//!
//! # Layout
//!
//! Everything lives in the `nat` table of the router namespace, in two user chains that the
//! original PRaaS used, each jumped to once from the top of the matching built-in chain:
//!
//! ```text
//! -A PREROUTING -j custom-PREROUTING
//! -A POSTROUTING -j custom-POSTROUTING
//!
//! # one per gateway address: label flows from behind the router (hairpin, see below)
//! -A custom-PREROUTING -d GW/32 ! -i qg-+ -m connlabel --label "127" --set
//! # one per forward (external port) ...
//! -A custom-PREROUTING -d GW/32 -p tcp -m tcp --dport 4000 -j DNAT --to-destination VM:22
//! # ... or, for a restricted forward, one per allowed source and no unrestricted rule
//! -A custom-PREROUTING -s 198.51.100.0/24 -d GW/32 -p tcp -m tcp --dport 4001 -j DNAT --to-destination VM:80
//!
//! -A custom-POSTROUTING -m conntrack --ctstate DNAT -m connlabel --label "127" -j MASQUERADE
//! # one per masqueraded (gateway, VM socket)
//! -A custom-POSTROUTING -d VM/32 -p udp -m udp --dport 53 -m conntrack --ctstate DNAT --ctorigdst GW -j MASQUERADE
//! ```
//!
//! The chain names are those of the original PRaaS so that a node migrating from it takes its
//! chains over instead of stacking a second set of DNAT rules on top of them, and so that
//! operators' runbooks that inspect `custom-PREROUTING` keep working. We never touch any other
//! rule or chain: Neutron's own chains and rules in the same table are left alone.
//!
//! The semantics are those of the nftables backend ([`super::nft`]): a forward DNATs its
//! external key; a restricted forward DNATs only the listed sources (other sources are left
//! untranslated and reach nothing); masqueraded forwards get their client rewritten to the
//! router's address.
//!
//! # Hairpin
//!
//! A flow that reaches a forward from behind the router (not through the gateway device `qg-*`)
//! must be masqueraded, or the VM would answer its neighbour directly, bypassing the reverse
//! DNAT. As in the nftables backend, prerouting sets conntrack label bit
//! [`HAIRPIN_LABEL`] (127) and postrouting masquerades DNATed flows that
//! carry it. `-m connlabel --set` is a match that sets the bit and matches; it works with
//! numeric labels without `/etc/xtables/connlabel.conf` (iptables only warns on stderr that the
//! file is missing), with both the nf_tables flavour (which translates it to a native
//! `ct label set`) and the legacy one. Rather than doubling every DNAT rule, the label is set
//! for every flow from behind the router to a gateway address: only the DNAT rules of this
//! chain translate gateway addresses (Neutron DNATs floating IPs and the metadata address,
//! never the gateway), so "labelled and DNATed" is exactly "hairpin flow of one of our
//! forwards". A labelled flow that matches no forward is not translated and so not
//! masqueraded either.
//!
//! [`HAIRPIN_LABEL`]: super::nft::HAIRPIN_LABEL
//!
//! # No usage counters
//!
//! [`Backend::usage`] answers `None` here. The nat table only sees the first packet of a
//! connection, so the DNAT rules' own counters count connections, not traffic; exact counts
//! would need one counting rule per mapping in a filter chain, a linear walk for every
//! forwarded packet, which is what this layout already pays on first packets and what the
//! nftables backend's one set lookup avoids.
//!
//! # Transactions
//!
//! Every call is one `iptables-restore --noflush` with a `*nat ... COMMIT` input, which the
//! kernel applies atomically. Declaring `:custom-PREROUTING - [0:0]` in a `--noflush` restore
//! creates the chain or flushes it, so a full sync declares both chains and writes all their
//! rules. The built-in chains are not flushed: the same input inserts a missing jump at position
//! 1 and deletes duplicates, so each jump exists exactly once afterwards. How many jumps exist is
//! read with `iptables-save -t nat` in the same visit to the namespace.
//!
//! iptables has no keyed elements to add or delete, so [`Backend::update`] reads the chains
//! back, applies the changes to that state ([`RuleSet::apply`]) after checking that what they
//! remove is there (as nft refuses to delete a missing element), and rewrites both chains.
//!
//! Rules are rendered in the canonical form `iptables-save` prints (option order, quoting), and
//! read back by parsing exactly that form: a line in our chains that is not one of the rules
//! above is a read-back error naming the line, and rules that parse but are not what the parsed
//! state renders to (a missing label rule, a duplicate, a different order) are drift. Both make
//! the sync layer rewrite the chains.
//!
//! Limits: a restricted key with no allowed source forwards nothing and so renders no rule; it
//! does not read back (the forward is absent). [`RuleSet::from_forwards`] never produces one.
//! If a site's `connlabel.conf` names bit 127, `iptables-save` prints that name and read-back
//! reports the label rules as unparseable.
//!
//! `iptables-restore` and `iptables-save` are spawned from a thread inside the namespace
//! ([`netns::run_in`]), so they inherit it without `ip netns exec`.

mod parse;
mod render;

use std::io;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use tracing::{debug, trace};

use super::{
    netns, Backend, Changes, DataplaneError, ExternalKey, MasqueradeKey, RouterNamespace, RuleSet,
    Target,
};
use crate::process::{run, RunError};
use parse::{parse_chains, rule_set_of, structure_mismatch};
pub use parse::{parse_rules, parse_save, Malformed, NatListing, ParseError};
pub use render::{render_full, render_remove};

/// Name of this backend in logs and errors.
const BACKEND: &str = "iptables";
/// Seconds `iptables-restore` waits for the xtables lock (held by Neutron's agents on legacy
/// iptables); the nf_tables flavour ignores it.
const LOCK_WAIT_SECONDS: &str = "10";

/// Our user chain jumped to from `PREROUTING` (DNAT).
pub const PREROUTING_CHAIN: &str = "custom-PREROUTING";
/// Our user chain jumped to from `POSTROUTING` (masquerade).
pub const POSTROUTING_CHAIN: &str = "custom-POSTROUTING";

/// One of the two hooks we hang a chain on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting = 0,
    Postrouting = 1,
}

impl Hook {
    pub const ALL: [Hook; 2] = [Hook::Prerouting, Hook::Postrouting];

    /// The built-in chain that jumps to ours.
    pub fn builtin(self) -> &'static str {
        match self {
            Hook::Prerouting => "PREROUTING",
            Hook::Postrouting => "POSTROUTING",
        }
    }

    /// Our user chain.
    pub fn chain(self) -> &'static str {
        match self {
            Hook::Prerouting => PREROUTING_CHAIN,
            Hook::Postrouting => POSTROUTING_CHAIN,
        }
    }

    fn of_chain(name: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.chain() == name)
    }
}

/// One rule of our chains.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    /// Labels flows from behind the router to a gateway address (custom-PREROUTING).
    HairpinLabel { gateway: Ipv4Addr },
    /// DNATs one external key, from one source network only when the key is restricted
    /// (custom-PREROUTING).
    Dnat {
        source: Option<Ipv4Net>,
        key: ExternalKey,
        target: Target,
    },
    /// Masquerades labelled flows that were DNATed (custom-POSTROUTING).
    HairpinMasquerade,
    /// Masquerades the flows of one forward (custom-POSTROUTING).
    Masquerade(MasqueradeKey),
}

impl Rule {
    fn hook(&self) -> Hook {
        match self {
            Rule::HairpinLabel { .. } | Rule::Dnat { .. } => Hook::Prerouting,
            Rule::HairpinMasquerade | Rule::Masquerade(_) => Hook::Postrouting,
        }
    }
}

/// What an update removes that the chains do not hold.
#[derive(Debug, thiserror::Error)]
pub enum NotThere {
    #[error("forward {key} to {}:{} is not there to remove", .target.ip, .target.port)]
    Forward { key: ExternalKey, target: Target },
    #[error("restriction of {0} is not there to remove")]
    Restriction(ExternalKey),
    #[error("allowed source {net} of {key} is not there to remove")]
    AllowedSource { key: ExternalKey, net: Ipv4Net },
    #[error(
        "masquerade of {}:{}/{} is not there to remove",
        .0.internal_ip, .0.internal_port, .0.protocol
    )]
    Masquerade(MasqueradeKey),
}

/// Applies `changes` to `state`, refusing removals of what `state` does not hold: the kernel
/// state is not what the caller thinks, and only a full sync can be trusted then.
fn apply_checked(state: &mut RuleSet, changes: &Changes) -> Result<(), NotThere> {
    for (key, target) in &changes.remove_forwards {
        if state.forwards.get(key) != Some(target) {
            return Err(NotThere::Forward {
                key: *key,
                target: *target,
            });
        }
    }
    if let Some(key) = changes
        .remove_restricted
        .iter()
        .find(|k| !state.restricted.contains(k))
    {
        return Err(NotThere::Restriction(*key));
    }
    if let Some((key, net)) = changes
        .remove_allowed
        .iter()
        .find(|a| !state.allowed.contains(a))
    {
        return Err(NotThere::AllowedSource {
            key: *key,
            net: *net,
        });
    }
    if let Some(k) = changes
        .remove_masqueraded
        .iter()
        .find(|k| !state.masqueraded.contains(k))
    {
        return Err(NotThere::Masquerade(*k));
    }
    state.apply(changes);
    Ok(())
}

/// Programs router namespaces with `iptables-restore`, in the original PRaaS chain layout.
pub struct IptablesBackend {
    restore: &'static str,
    save: &'static str,
    /// Whether `iptables` is the legacy (x_tables) flavour, asked once when first needed.
    legacy: std::sync::OnceLock<bool>,
}

impl IptablesBackend {
    pub fn new() -> Self {
        IptablesBackend {
            restore: "iptables-restore",
            save: "iptables-save",
            legacy: std::sync::OnceLock::new(),
        }
    }

    /// `iptables-save --version` says `(legacy)` or `(nf_tables)`; one that cannot be asked
    /// is taken for nf_tables, the default of current distributions.
    fn is_legacy(&self) -> bool {
        *self.legacy.get_or_init(|| {
            run(self.save, &["--version"], None).is_ok_and(|v| v.contains("legacy"))
        })
    }

    fn unavailable(source: io::Error) -> DataplaneError {
        DataplaneError::Unavailable {
            backend: BACKEND,
            source: Box::new(source),
        }
    }

    /// `iptables-save -t nat`, parsed. Must run inside the namespace.
    fn listing(&self, namespace: &RouterNamespace) -> Result<NatListing, DataplaneError> {
        match run(self.save, &["-t", "nat"], None) {
            Ok(text) => Ok(parse_save(&text)),
            Err(RunError::Spawn(e)) => Err(Self::unavailable(e)),
            Err(RunError::Failed(message)) => Err(DataplaneError::ReadBack {
                namespace: namespace.to_string(),
                message,
            }),
        }
    }

    /// One `iptables-restore --noflush` transaction. Must run inside the namespace.
    fn restore(&self, namespace: &RouterNamespace, input: &str) -> Result<(), DataplaneError> {
        trace!(%namespace, input, "iptables-restore transaction");
        let args = ["-w", LOCK_WAIT_SECONDS, "--noflush"];
        match run(self.restore, &args, Some(input)) {
            Ok(_) => Ok(()),
            Err(RunError::Spawn(e)) => Err(Self::unavailable(e)),
            Err(RunError::Failed(message)) => Err(DataplaneError::Rejected {
                backend: BACKEND,
                namespace: namespace.to_string(),
                message,
            }),
        }
    }

    /// Reads back our chains. Must run inside the namespace.
    fn read_back_here(
        &self,
        namespace: &RouterNamespace,
    ) -> Result<Option<RuleSet>, DataplaneError> {
        let listing = self.listing(namespace)?;
        if !listing.is_complete() {
            return Ok(None);
        }
        let chains = parse_chains(&listing).map_err(|source| DataplaneError::ReadBackParse {
            namespace: namespace.to_string(),
            source,
        })?;
        let rules = rule_set_of(&chains);
        let drift = |detail: String| DataplaneError::Drift {
            namespace: namespace.to_string(),
            detail,
        };
        for hook in Hook::ALL {
            let n = listing.jumps[hook as usize];
            if n != 1 {
                return Err(drift(format!(
                    "{} jumps to {} {n} times",
                    hook.builtin(),
                    hook.chain()
                )));
            }
        }
        if let Some(detail) = structure_mismatch(&chains, &rules) {
            return Err(drift(detail));
        }
        Ok(Some(rules))
    }
}

impl Default for IptablesBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl Backend for IptablesBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn full_sync(
        &self,
        namespace: &RouterNamespace,
        rules: &RuleSet,
    ) -> Result<(), DataplaneError> {
        debug!(%namespace, forwards = rules.forwards.len(), "iptables full sync");
        netns::run_in(namespace, || {
            let listing = self.listing(namespace)?;
            self.restore(namespace, &render_full(rules, listing.jumps))
        })?
    }

    fn update(&self, namespace: &RouterNamespace, changes: &Changes) -> Result<(), DataplaneError> {
        if changes.is_empty() {
            return Ok(());
        }
        netns::run_in(namespace, || {
            let mut state =
                self.read_back_here(namespace)?
                    .ok_or_else(|| DataplaneError::Drift {
                        namespace: namespace.to_string(),
                        detail: format!(
                            "{PREROUTING_CHAIN} or {POSTROUTING_CHAIN} or a jump to them is missing"
                        ),
                    })?;
            apply_checked(&mut state, changes).map_err(|source| DataplaneError::DriftRemoval {
                namespace: namespace.to_string(),
                source,
            })?;
            self.restore(namespace, &render_full(&state, [1, 1]))
        })?
    }

    fn read_back(&self, namespace: &RouterNamespace) -> Result<Option<RuleSet>, DataplaneError> {
        netns::run_in(namespace, || self.read_back_here(namespace))?
    }

    /// Not counted with this layout (see the module's documentation).
    fn usage(
        &self,
        _: &RouterNamespace,
    ) -> Result<Option<std::collections::BTreeMap<MasqueradeKey, super::Usage>>, DataplaneError>
    {
        Ok(None)
    }

    /// iptables-nft commits nf_tables transactions, so the nf_tables generation moves with
    /// every change of the nat table. Legacy iptables has no generation: the shape of the
    /// legacy nat table (entries, size, hook offsets) is read with one `getsockopt` instead,
    /// which a rule changed into one of the same size would not move (the resync catches it).
    fn fingerprint(
        &self,
        namespace: &RouterNamespace,
    ) -> Result<Option<super::Fingerprint>, DataplaneError> {
        if !self.is_legacy() {
            return super::nft_fingerprint(namespace).map(Some);
        }
        let inode = netns::inode(namespace)?;
        let state =
            netns::run_in(namespace, legacy_nat_shape)?.map_err(|e| DataplaneError::ReadBack {
                namespace: namespace.to_string(),
                message: e.to_string(),
            })?;
        Ok(Some(super::Fingerprint {
            namespace: inode,
            state,
        }))
    }

    fn remove(&self, namespace: &RouterNamespace) -> Result<(), DataplaneError> {
        if !netns::exists(namespace.name()) {
            // The router is gone and its namespace with it: nothing of ours remains.
            return Ok(());
        }
        netns::run_in(namespace, || {
            let listing = self.listing(namespace)?;
            match render_remove(&listing) {
                Some(input) => self.restore(namespace, &input),
                None => Ok(()),
            }
        })?
    }
}

/// A hash of the legacy nat table's `ipt_getinfo` (`IPT_SO_GET_INFO`), in the calling thread's
/// namespace; 0 when the namespace has no legacy nat table.
fn legacy_nat_shape() -> io::Result<u64> {
    use std::hash::{Hash, Hasher};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // linux/netfilter_ipv4/ip_tables.h: IPT_BASE_CTL + 0; struct ipt_getinfo is the table's
    // name (32 bytes), valid_hooks, hook_entry[5], underflow[5], num_entries and size.
    const IPT_SO_GET_INFO: libc::c_int = 64;
    const INFO_LEN: usize = 32 + 4 * (1 + 5 + 5 + 1 + 1);
    // SAFETY: plain socket(2); the descriptor is owned and closed by `fd`.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor we just opened and own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut info = [0u8; INFO_LEN];
    info[..3].copy_from_slice(b"nat");
    let mut len = INFO_LEN as libc::socklen_t;
    // SAFETY: `info` is INFO_LEN bytes and `len` says so.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IP,
            IPT_SO_GET_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT) => Ok(0),
            _ => Err(e),
        };
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    info[32..].hash(&mut hasher);
    Ok(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{Forward, Protocol};

    #[test]
    fn this_layout_has_no_usage_counters() {
        let ns = RouterNamespace::named("qrouter-without-counters");
        assert_eq!(IptablesBackend::new().usage(&ns).unwrap(), None);
    }

    pub(super) fn forward(id: &str, protocol: Protocol, ext: &str, vm: &str, int: &str) -> Forward {
        Forward {
            id: id.into(),
            protocol,
            external_ip: "203.0.113.10".parse().unwrap(),
            external_ports: ext.parse().unwrap(),
            internal_ip: vm.parse().unwrap(),
            internal_ports: int.parse().unwrap(),
            allowed_cidrs: vec![],
            masquerade: false,
        }
    }

    /// A restricted forward (two CIDRs), a masqueraded udp forward and a plain one.
    pub(super) fn sample() -> RuleSet {
        let mut ssh = forward("ssh", Protocol::Tcp, "4000", "10.0.0.5", "22");
        ssh.allowed_cidrs = vec![
            "198.51.100.0/24".parse().unwrap(),
            "192.0.2.128/25".parse().unwrap(),
        ];
        let mut dns = forward("dns", Protocol::Udp, "4001", "10.0.0.6", "53");
        dns.masquerade = true;
        let web = forward("web", Protocol::Tcp, "8080", "10.0.0.7", "80");
        RuleSet::from_forwards([&ssh, &dns, &web]).unwrap()
    }

    /// What `iptables-save -t nat` prints after `render_full` was restored into an empty table
    /// (our chains come in alphabetical order; Neutron's chains are left in to be ignored).
    pub(super) fn saved(rules: &RuleSet) -> String {
        let input = render_full(rules, [1, 1]);
        let ours: Vec<&str> = input.lines().filter(|l| l.starts_with("-A")).collect();
        let post: Vec<&str> = ours
            .iter()
            .copied()
            .filter(|l| l.starts_with("-A custom-POSTROUTING"))
            .collect();
        let pre: Vec<&str> = ours
            .iter()
            .copied()
            .filter(|l| l.starts_with("-A custom-PREROUTING"))
            .collect();
        format!(
            "# Generated by iptables-save v1.8.9 (nf_tables)\n\
             *nat\n\
             :PREROUTING ACCEPT [0:0]\n\
             :INPUT ACCEPT [0:0]\n\
             :OUTPUT ACCEPT [0:0]\n\
             :POSTROUTING ACCEPT [0:0]\n\
             :custom-POSTROUTING - [0:0]\n\
             :custom-PREROUTING - [0:0]\n\
             :neutron-l3-agent-PREROUTING - [0:0]\n\
             -A PREROUTING -j custom-PREROUTING\n\
             -A PREROUTING -j neutron-l3-agent-PREROUTING\n\
             -A POSTROUTING -j custom-POSTROUTING\n\
             {}\n{}\n\
             -A neutron-l3-agent-PREROUTING -d 203.0.113.20/32 -j DNAT --to-destination 10.0.0.9\n\
             COMMIT\n\
             # Completed\n",
            post.join("\n"),
            pre.join("\n")
        )
    }

    #[test]
    fn removal_of_what_is_not_there_is_refused() {
        let old = sample();
        let mut new = old.clone();
        new.forwards.clear();
        new.restricted.clear();
        new.allowed.clear();
        new.masqueraded.clear();
        new.counted.clear();
        let changes = old.diff(&new);
        let mut state = old.clone();
        apply_checked(&mut state, &changes).unwrap();
        assert_eq!(state, new);
        let mut empty = RuleSet::default();
        let err = apply_checked(&mut empty, &changes).unwrap_err();
        assert!(err.to_string().contains("not there"), "{err}");
        assert_eq!(empty, RuleSet::default());
    }
}

/// Tests against real namespaces; they need root and skip themselves otherwise.
#[cfg(test)]
mod netns_tests {
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::dataplane::Protocol;

    /// A namespace of our own, deleted when dropped, even when the test panics.
    struct TestNamespace(RouterNamespace);

    impl TestNamespace {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let name = format!(
                "praas-ipt-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::SeqCst)
            );
            let status = Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .expect("run ip netns add");
            assert!(status.success(), "ip netns add {name} failed");
            TestNamespace(RouterNamespace::named(name))
        }

        /// Runs a command inside the namespace and returns its stdout.
        fn exec(&self, program: &str, args: &[&str]) -> String {
            let out = netns::run_in(&self.0, || {
                Command::new(program)
                    .args(args)
                    .stderr(Stdio::null())
                    .output()
            })
            .unwrap()
            .unwrap();
            assert!(out.status.success(), "{program} {args:?} failed");
            String::from_utf8(out.stdout).unwrap()
        }

        /// Lines of `iptables -t nat -S chain` that equal `rule`.
        fn count(&self, chain: &str, rule: &str) -> usize {
            self.exec("iptables", &["-t", "nat", "-S", chain])
                .lines()
                .filter(|l| l.trim() == rule)
                .count()
        }

        fn jumps(&self) -> [usize; 2] {
            [
                self.count("PREROUTING", "-A PREROUTING -j custom-PREROUTING"),
                self.count("POSTROUTING", "-A POSTROUTING -j custom-POSTROUTING"),
            ]
        }
    }

    impl Drop for TestNamespace {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "del", self.0.name()])
                .status();
        }
    }

    fn changed(old: &RuleSet) -> RuleSet {
        let mut new = old.clone();
        // Re-point the plain forward, drop the masquerade, add a restricted forward.
        let web = ExternalKey {
            ip: "203.0.113.10".parse().unwrap(),
            protocol: Protocol::Tcp,
            port: 8080,
        };
        new.forwards.insert(
            web,
            Target {
                ip: "10.0.0.8".parse().unwrap(),
                port: 8000,
            },
        );
        new.masqueraded.clear();
        let rdp = ExternalKey {
            ip: "203.0.113.11".parse().unwrap(),
            protocol: Protocol::Udp,
            port: 3389,
        };
        new.forwards.insert(
            rdp,
            Target {
                ip: "10.0.0.9".parse().unwrap(),
                port: 3389,
            },
        );
        new.restricted.insert(rdp);
        new.allowed.insert((rdp, "192.0.2.7/32".parse().unwrap()));
        new.counted = RuleSet::counted_of(&new.forwards);
        new
    }

    #[test]
    fn full_sync_update_read_back_remove() {
        if !crate::testbed::simnode::kernel_tests_enabled("iptables") {
            return;
        }
        let ns = TestNamespace::new();
        let backend = IptablesBackend::new();
        assert_eq!(backend.read_back(&ns.0).unwrap(), None);

        // Something of Neutron's that must survive everything we do.
        let neutron = "*nat\n:neutron-l3-agent-PREROUTING - [0:0]\n\
                       -A PREROUTING -j neutron-l3-agent-PREROUTING\n\
                       -A neutron-l3-agent-PREROUTING -d 203.0.113.20/32 -j DNAT --to-destination 10.0.0.20\n\
                       COMMIT\n";
        netns::run_in(&ns.0, || backend.restore(&ns.0, neutron))
            .unwrap()
            .unwrap();

        let rules = tests::sample();
        backend.full_sync(&ns.0, &rules).unwrap();
        assert_eq!(backend.read_back(&ns.0).unwrap(), Some(rules.clone()));
        backend.full_sync(&ns.0, &rules).unwrap();
        assert_eq!(ns.jumps(), [1, 1]);
        let pre = ns.exec("iptables", &["-t", "nat", "-S", "PREROUTING"]);
        assert!(
            pre.lines().nth(1) == Some("-A PREROUTING -j custom-PREROUTING"),
            "our jump is not first:\n{pre}"
        );

        let new = changed(&rules);
        backend.update(&ns.0, &rules.diff(&new)).unwrap();
        assert_eq!(backend.read_back(&ns.0).unwrap(), Some(new.clone()));
        // The same changes again remove what is no longer there: refused, nothing written.
        let err = backend.update(&ns.0, &rules.diff(&new)).unwrap_err();
        assert!(matches!(err, DataplaneError::DriftRemoval { .. }), "{err}");
        assert_eq!(backend.read_back(&ns.0).unwrap(), Some(new.clone()));

        // A duplicate jump is drift, and a full sync repairs it.
        ns.exec(
            "iptables",
            &["-t", "nat", "-A", "POSTROUTING", "-j", "custom-POSTROUTING"],
        );
        let err = backend.read_back(&ns.0).unwrap_err();
        assert!(matches!(err, DataplaneError::Drift { .. }), "{err}");
        backend.full_sync(&ns.0, &new).unwrap();
        assert_eq!(ns.jumps(), [1, 1]);
        assert_eq!(backend.read_back(&ns.0).unwrap(), Some(new.clone()));

        // A rule we did not write is a read-back error naming it.
        let foreign = "-A custom-PREROUTING -p tcp -m tcp --dport 9 -j REDIRECT --to-ports 22";
        ns.exec(
            "iptables",
            &[
                "-t",
                "nat",
                "-A",
                "custom-PREROUTING",
                "-p",
                "tcp",
                "--dport",
                "9",
                "-j",
                "REDIRECT",
                "--to-ports",
                "22",
            ],
        );
        match backend.read_back(&ns.0) {
            Err(DataplaneError::ReadBackParse { source, .. }) => {
                assert!(source.to_string().contains(foreign), "{source}")
            }
            other => panic!("expected a read-back error, got {other:?}"),
        }
        // An update refuses to build on it; a full sync replaces it.
        assert!(backend.update(&ns.0, &new.diff(&rules)).is_err());
        backend.full_sync(&ns.0, &new).unwrap();
        assert_eq!(backend.read_back(&ns.0).unwrap(), Some(new.clone()));

        backend.remove(&ns.0).unwrap();
        assert_eq!(backend.read_back(&ns.0).unwrap(), None);
        assert_eq!(ns.jumps(), [0, 0]);
        let save = ns.exec("iptables-save", &["-t", "nat"]);
        assert!(!save.contains("custom-"), "{save}");
        assert!(save.contains("-A neutron-l3-agent-PREROUTING -d 203.0.113.20/32"));
        // Removing again is not an error.
        backend.remove(&ns.0).unwrap();
    }

    #[test]
    fn update_without_our_chains_fails_so_that_sync_rewrites() {
        if !crate::testbed::simnode::kernel_tests_enabled("iptables") {
            return;
        }
        let ns = TestNamespace::new();
        let backend = IptablesBackend::new();
        let rules = tests::sample();
        let err = backend
            .update(&ns.0, &RuleSet::default().diff(&rules))
            .unwrap_err();
        assert!(matches!(err, DataplaneError::Drift { .. }), "{err}");
        assert_eq!(backend.read_back(&ns.0).unwrap(), None);
    }

    #[test]
    fn the_legacy_flavour_is_fingerprinted_by_the_shape_of_its_nat_table() {
        if !crate::testbed::simnode::kernel_tests_enabled("iptables_legacy_fingerprint") {
            return;
        }
        let ns = TestNamespace::new();
        let legacy = IptablesBackend {
            restore: "iptables-legacy-restore",
            save: "iptables-legacy-save",
            legacy: Default::default(),
        };
        assert!(
            legacy.is_legacy(),
            "iptables-legacy-save --version says legacy"
        );
        let rules = tests::sample();
        legacy.full_sync(&ns.0, &rules).unwrap();
        let programmed = legacy.fingerprint(&ns.0).unwrap().unwrap();
        assert_ne!(programmed.state, 0, "a legacy nat table is there");
        assert_eq!(legacy.fingerprint(&ns.0).unwrap(), Some(programmed));
        // Someone flushes our chain with legacy iptables: the shape moves, nf_tables' would not.
        ns.exec("iptables-legacy", &["-t", "nat", "-F", PREROUTING_CHAIN]);
        let flushed = legacy.fingerprint(&ns.0).unwrap().unwrap();
        assert_ne!(flushed, programmed);
        assert_eq!(flushed.namespace, programmed.namespace);
        // Through the sync layer: the change is found and repaired.
        let sync = crate::dataplane::sync::RouterSync::new(
            std::sync::Arc::new(legacy),
            std::sync::Arc::new(crate::testbed::fake_dataplane::NoFlows),
        );
        sync.sync(&ns.0, &rules).unwrap();
        assert_eq!(
            sync.check(&ns.0).unwrap(),
            crate::dataplane::sync::Check::Unchanged
        );
        ns.exec("iptables-legacy", &["-t", "nat", "-F", PREROUTING_CHAIN]);
        assert!(matches!(
            sync.check(&ns.0).unwrap(),
            crate::dataplane::sync::Check::Drifted(_)
        ));
        assert_eq!(
            sync.sync(&ns.0, &rules).unwrap().mode,
            crate::dataplane::sync::SyncMode::Full
        );
        assert_eq!(sync.backend().read_back(&ns.0).unwrap(), Some(rules));
    }

    #[test]
    fn missing_namespace_and_missing_binaries() {
        if !crate::testbed::simnode::kernel_tests_enabled("iptables") {
            return;
        }
        let gone = RouterNamespace::named(format!("praas-ipt-test-{}-gone", std::process::id()));
        let backend = IptablesBackend::new();
        backend.remove(&gone).unwrap();
        assert!(matches!(
            backend.read_back(&gone),
            Err(DataplaneError::Namespace { .. })
        ));

        let ns = TestNamespace::new();
        let missing = IptablesBackend {
            restore: "praas-no-such-iptables-restore",
            save: "praas-no-such-iptables-save",
            legacy: Default::default(),
        };
        let err = missing.full_sync(&ns.0, &RuleSet::default()).unwrap_err();
        assert!(matches!(err, DataplaneError::Unavailable { .. }), "{err}");

        // A restore that fails is a rejection carrying its stderr.
        let rejecting = IptablesBackend {
            restore: "false",
            save: "iptables-save",
            legacy: Default::default(),
        };
        match rejecting.full_sync(&ns.0, &RuleSet::default()) {
            Err(DataplaneError::Rejected {
                backend, namespace, ..
            }) => assert_eq!((backend, namespace.as_str()), ("iptables", ns.0.name())),
            other => panic!("expected a rejection, got {other:?}"),
        }
        let bad = "*nat\n-A custom-PREROUTING -j NO-SUCH-CHAIN\nCOMMIT\n";
        match netns::run_in(&ns.0, || backend.restore(&ns.0, bad)).unwrap() {
            Err(DataplaneError::Rejected { message, .. }) => {
                assert!(
                    !message.is_empty() && message == message.trim(),
                    "{message:?}"
                )
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
}
