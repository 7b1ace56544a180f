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

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use tracing::{debug, trace};

use super::nft::render::GATEWAY_DEVICE_PREFIX;
use super::nft::HAIRPIN_LABEL;
use super::{
    netns, Backend, Changes, DataplaneError, ExternalKey, MasqueradeKey, Protocol, RouterNamespace,
    RuleSet, Target,
};
use crate::process::{run, RunError};

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

    /// The rule as `iptables-save` prints it, `-A chain` included.
    fn render(&self) -> String {
        let chain = self.hook().chain();
        match self {
            Rule::HairpinLabel { gateway } => format!(
                "-A {chain} -d {gateway}/32 ! -i {GATEWAY_DEVICE_PREFIX}+ -m connlabel --label \"{HAIRPIN_LABEL}\" --set"
            ),
            Rule::Dnat {
                source,
                key,
                target,
            } => {
                let source = source.map(|s| format!("-s {s} ")).unwrap_or_default();
                let proto = key.protocol;
                format!(
                    "-A {chain} {source}-d {}/32 -p {proto} -m {proto} --dport {} -j DNAT --to-destination {}:{}",
                    key.ip, key.port, target.ip, target.port
                )
            }
            Rule::HairpinMasquerade => format!(
                "-A {chain} -m conntrack --ctstate DNAT -m connlabel --label \"{HAIRPIN_LABEL}\" -j MASQUERADE"
            ),
            Rule::Masquerade(k) => {
                let proto = k.protocol;
                format!(
                    "-A {chain} -d {}/32 -p {proto} -m {proto} --dport {} -m conntrack --ctstate DNAT --ctorigdst {} -j MASQUERADE",
                    k.internal_ip, k.internal_port, k.external_ip
                )
            }
        }
    }
}

/// The rules of both chains for `rules`, indexed by [`Hook`], in the order they are written.
fn rules_of(rules: &RuleSet) -> [Vec<Rule>; 2] {
    let mut pre = Vec::with_capacity(rules.forwards.len() + 1);
    let gateways: BTreeSet<Ipv4Addr> = rules.forwards.keys().map(|k| k.ip).collect();
    pre.extend(
        gateways
            .into_iter()
            .map(|gateway| Rule::HairpinLabel { gateway }),
    );
    for (key, target) in &rules.forwards {
        if rules.restricted.contains(key) {
            let sources = rules
                .allowed
                .range((*key, Ipv4Net::default())..)
                .take_while(|(k, _)| k == key);
            pre.extend(sources.map(|(_, net)| Rule::Dnat {
                source: Some(*net),
                key: *key,
                target: *target,
            }));
        } else {
            pre.push(Rule::Dnat {
                source: None,
                key: *key,
                target: *target,
            });
        }
    }
    let mut post = Vec::with_capacity(rules.masqueraded.len() + 1);
    post.push(Rule::HairpinMasquerade);
    post.extend(rules.masqueraded.iter().copied().map(Rule::Masquerade));
    [pre, post]
}

/// The `iptables-restore --noflush` input that replaces our chains with `rules`.
///
/// `jumps[hook]` is how many times the built-in chain of `hook` jumps to ours now: a missing
/// jump is inserted at the top, duplicates are deleted, so exactly one remains.
pub fn render_full(rules: &RuleSet, jumps: [usize; 2]) -> String {
    let chains = rules_of(rules);
    let mut out = String::with_capacity(256 + rules.forwards.len() * 110);
    out.push_str("*nat\n");
    for hook in Hook::ALL {
        let _ = writeln!(out, ":{} - [0:0]", hook.chain());
    }
    for hook in Hook::ALL {
        let (builtin, chain) = (hook.builtin(), hook.chain());
        match jumps[hook as usize] {
            0 => {
                let _ = writeln!(out, "-I {builtin} 1 -j {chain}");
            }
            n => {
                for _ in 1..n {
                    let _ = writeln!(out, "-D {builtin} -j {chain}");
                }
            }
        }
    }
    for rule in chains.iter().flatten() {
        out.push_str(&rule.render());
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    out
}

/// The `iptables-restore --noflush` input that removes our jumps and chains, or `None` when
/// `listing` shows nothing of ours.
pub fn render_remove(listing: &NatListing) -> Option<String> {
    if listing.declared == [false, false] && listing.jumps == [0, 0] {
        return None;
    }
    let mut out = String::from("*nat\n");
    // Declaring flushes the chain or creates it, so deleting it works whether it exists or not.
    for hook in Hook::ALL {
        let _ = writeln!(out, ":{} - [0:0]", hook.chain());
    }
    for hook in Hook::ALL {
        for _ in 0..listing.jumps[hook as usize] {
            let _ = writeln!(out, "-D {} -j {}", hook.builtin(), hook.chain());
        }
    }
    for hook in Hook::ALL {
        let _ = writeln!(out, "-X {}", hook.chain());
    }
    out.push_str("COMMIT\n");
    Some(out)
}

/// What `iptables-save -t nat` shows of ours. Arrays are indexed by [`Hook`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatListing {
    /// Whether each of our chains exists.
    pub declared: [bool; 2],
    /// How many times each built-in chain jumps to ours (`-A PREROUTING -j custom-PREROUTING`).
    pub jumps: [usize; 2],
    /// The `-A` lines of each of our chains, in order.
    pub lines: [Vec<String>; 2],
}

impl NatListing {
    /// Whether both chains and both jumps exist.
    pub fn is_complete(&self) -> bool {
        self.declared.iter().all(|d| *d) && self.jumps.iter().all(|n| *n > 0)
    }
}

/// Picks our chains and jumps out of `iptables-save` output; everything else is ignored.
pub fn parse_save(text: &str) -> NatListing {
    let mut listing = NatListing::default();
    let mut in_nat = false;
    for line in text.lines().map(str::trim) {
        if let Some(table) = line.strip_prefix('*') {
            in_nat = table == "nat";
            continue;
        }
        if !in_nat {
            continue;
        }
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if let Some(hook) = Hook::of_chain(name) {
                listing.declared[hook as usize] = true;
            }
            continue;
        }
        let mut words = line.split_whitespace();
        if words.next() != Some("-A") {
            continue;
        }
        let chain = words.next().unwrap_or_default();
        if let Some(hook) = Hook::of_chain(chain) {
            listing.lines[hook as usize].push(line.to_string());
        } else if let Some(hook) = Hook::ALL.into_iter().find(|h| h.builtin() == chain) {
            let rest: Vec<&str> = words.collect();
            if rest == ["-j", hook.chain()] {
                listing.jumps[hook as usize] += 1;
            }
        }
    }
    listing
}

/// Splits a saved rule into words; double quotes group words and `\` escapes inside them.
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = line.chars();
    let mut word: Option<String> = None;
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => w.push(chars.next().ok_or("unterminated quote")?),
                        Some(c) => w.push(c),
                        None => return Err("unterminated quote".into()),
                    }
                }
            }
            c if c.is_whitespace() => words.extend(word.take()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// The options of one saved rule that our rules use.
#[derive(Debug, Default)]
struct Options {
    chain: Option<String>,
    source: Option<Ipv4Net>,
    destination: Option<Ipv4Net>,
    /// Input interface and whether it is negated.
    input: Option<(bool, String)>,
    protocol: Option<Protocol>,
    modules: Vec<String>,
    dport: Option<u16>,
    ctstate: Option<String>,
    ctorigdst: Option<Ipv4Net>,
    label: Option<String>,
    label_set: bool,
    jump: Option<String>,
    to_destination: Option<Target>,
}

fn net(s: &str) -> Result<Ipv4Net, String> {
    if s.contains('/') {
        s.parse()
            .map_err(|_| format!("{s:?} is not an IPv4 network"))
    } else {
        let ip: Ipv4Addr = s
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 address"))?;
        Ok(Ipv4Net::from(ip))
    }
}

/// The address of a `/32` network.
fn host(n: Option<Ipv4Net>, what: &str) -> Result<Ipv4Addr, String> {
    match n {
        Some(n) if n.prefix_len() == 32 => Ok(n.addr()),
        Some(n) => Err(format!("{what} {n} is not a single address")),
        None => Err(format!("no {what}")),
    }
}

fn port(s: &str) -> Result<u16, String> {
    s.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{s:?} is not a single port"))
}

fn set_once<T>(slot: &mut Option<T>, value: T, option: &str) -> Result<(), String> {
    if slot.replace(value).is_some() {
        return Err(format!("{option} given twice"));
    }
    Ok(())
}

fn options(words: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut words = words.iter().map(String::as_str);
    let mut negated = false;
    while let Some(word) = words.next() {
        if word == "!" {
            negated = true;
            continue;
        }
        if negated && word != "-i" {
            return Err(format!("negated {word} is not one of ours"));
        }
        if word == "--set" {
            o.label_set = true;
            continue;
        }
        let value = words.next().ok_or_else(|| format!("{word} has no value"))?;
        match word {
            "-A" => set_once(&mut o.chain, value.to_string(), word)?,
            "-s" => set_once(&mut o.source, net(value)?, word)?,
            "-d" => set_once(&mut o.destination, net(value)?, word)?,
            "-i" => set_once(&mut o.input, (negated, value.to_string()), word)?,
            "-p" => {
                let p = value
                    .parse::<Protocol>()
                    .map_err(|_| format!("protocol {value:?} is not tcp or udp"))?;
                set_once(&mut o.protocol, p, word)?
            }
            "-m" => o.modules.push(value.to_string()),
            "--dport" => set_once(&mut o.dport, port(value)?, word)?,
            "--ctstate" => set_once(&mut o.ctstate, value.to_string(), word)?,
            "--ctorigdst" => set_once(&mut o.ctorigdst, net(value)?, word)?,
            "--label" => set_once(&mut o.label, value.to_string(), word)?,
            "-j" => set_once(&mut o.jump, value.to_string(), word)?,
            "--to-destination" => {
                let (ip, p) = value
                    .split_once(':')
                    .ok_or_else(|| format!("DNAT target {value:?} has no port"))?;
                let ip = ip
                    .parse()
                    .map_err(|_| format!("DNAT target {value:?} is not address:port"))?;
                set_once(&mut o.to_destination, Target { ip, port: port(p)? }, word)?
            }
            other => return Err(format!("option {other} is not one of ours")),
        }
        negated = false;
    }
    if negated {
        return Err("dangling !".into());
    }
    Ok(o)
}

/// Parses one `-A` line of our chains.
fn parse_rule(line: &str) -> Result<Rule, String> {
    let fail = |why: String| format!("cannot parse rule `{line}`: {why}");
    let words = split_words(line).map_err(fail)?;
    let o = options(&words).map_err(fail)?;
    let hook = o
        .chain
        .as_deref()
        .and_then(Hook::of_chain)
        .ok_or_else(|| fail("not a rule of our chains".into()))?;
    let mut modules = o.modules.clone();
    modules.sort();
    let label_ok = o.label.as_deref() == Some(HAIRPIN_LABEL.to_string().as_str());
    let only = |allowed: &[&str]| {
        let mut allowed: Vec<&str> = allowed.to_vec();
        allowed.sort();
        modules == allowed
    };
    let rule = match (hook, o.jump.as_deref()) {
        (Hook::Prerouting, None) => {
            let gateway_device = format!("{GATEWAY_DEVICE_PREFIX}+");
            let ok = label_ok
                && o.label_set
                && only(&["connlabel"])
                && o.input == Some((true, gateway_device))
                && o.source.is_none()
                && o.protocol.is_none()
                && o.dport.is_none()
                && o.ctstate.is_none()
                && o.ctorigdst.is_none()
                && o.to_destination.is_none();
            if !ok {
                return Err(fail("not a hairpin label rule".into()));
            }
            Rule::HairpinLabel {
                gateway: host(o.destination, "destination").map_err(fail)?,
            }
        }
        (Hook::Prerouting, Some("DNAT")) => {
            let protocol = o.protocol.ok_or_else(|| fail("no protocol".into()))?;
            let ok = only(&[protocol.as_str()])
                && o.input.is_none()
                && o.label.is_none()
                && !o.label_set
                && o.ctstate.is_none()
                && o.ctorigdst.is_none();
            if !ok {
                return Err(fail("not a DNAT rule of ours".into()));
            }
            Rule::Dnat {
                source: o.source,
                key: ExternalKey {
                    ip: host(o.destination, "destination").map_err(fail)?,
                    protocol,
                    port: o.dport.ok_or_else(|| fail("no destination port".into()))?,
                },
                target: o
                    .to_destination
                    .ok_or_else(|| fail("no DNAT target".into()))?,
            }
        }
        (Hook::Postrouting, Some("MASQUERADE")) if o.destination.is_none() => {
            let ok = label_ok
                && !o.label_set
                && only(&["conntrack", "connlabel"])
                && o.ctstate.as_deref() == Some("DNAT")
                && o.source.is_none()
                && o.input.is_none()
                && o.protocol.is_none()
                && o.dport.is_none()
                && o.ctorigdst.is_none()
                && o.to_destination.is_none();
            if !ok {
                return Err(fail("not the hairpin masquerade rule".into()));
            }
            Rule::HairpinMasquerade
        }
        (Hook::Postrouting, Some("MASQUERADE")) => {
            let protocol = o.protocol.ok_or_else(|| fail("no protocol".into()))?;
            let ok = only(&[protocol.as_str(), "conntrack"])
                && o.ctstate.as_deref() == Some("DNAT")
                && o.source.is_none()
                && o.input.is_none()
                && o.label.is_none()
                && !o.label_set
                && o.to_destination.is_none();
            if !ok {
                return Err(fail("not a masquerade rule of ours".into()));
            }
            Rule::Masquerade(MasqueradeKey {
                external_ip: host(o.ctorigdst, "original destination").map_err(fail)?,
                internal_ip: host(o.destination, "destination").map_err(fail)?,
                protocol,
                internal_port: o.dport.ok_or_else(|| fail("no destination port".into()))?,
            })
        }
        (_, jump) => {
            return Err(fail(format!(
                "target {} is not used in {}",
                jump.unwrap_or("(none)"),
                hook.chain()
            )))
        }
    };
    Ok(rule)
}

/// Parses the lines of both our chains into rules, indexed by [`Hook`].
fn parse_chains(listing: &NatListing) -> Result<[Vec<Rule>; 2], String> {
    let mut chains: [Vec<Rule>; 2] = Default::default();
    for hook in Hook::ALL {
        for line in &listing.lines[hook as usize] {
            chains[hook as usize].push(parse_rule(line)?);
        }
    }
    Ok(chains)
}

/// The rule set that parsed rules program (structure rules carry no elements).
fn rule_set_of(chains: &[Vec<Rule>; 2]) -> RuleSet {
    let mut set = RuleSet::default();
    for rule in chains.iter().flatten() {
        match rule {
            Rule::HairpinLabel { .. } | Rule::HairpinMasquerade => {}
            Rule::Dnat {
                source,
                key,
                target,
            } => {
                set.forwards.insert(*key, *target);
                if let Some(net) = source {
                    set.restricted.insert(*key);
                    set.allowed.insert((*key, *net));
                }
            }
            Rule::Masquerade(k) => {
                set.masqueraded.insert(*k);
            }
        }
    }
    set
}

/// Parses the lines of our chains into the rule set they program. Lines that are not rules of
/// ours are errors naming the line.
pub fn parse_rules(listing: &NatListing) -> Result<RuleSet, String> {
    parse_chains(listing).map(|chains| rule_set_of(&chains))
}

/// Why the chains are not what `rules` renders to, if they are not.
fn structure_mismatch(chains: &[Vec<Rule>; 2], rules: &RuleSet) -> Option<String> {
    let expected = rules_of(rules);
    for hook in Hook::ALL {
        let (found, wanted) = (&chains[hook as usize], &expected[hook as usize]);
        if let Some(i) = (0..found.len().min(wanted.len())).find(|i| found[*i] != wanted[*i]) {
            return Some(format!(
                "rule {} of {} is `{}` where `{}` was expected",
                i + 1,
                hook.chain(),
                found[i].render(),
                wanted[i].render()
            ));
        }
        if found.len() != wanted.len() {
            return Some(format!(
                "{} has {} rules, expected {}",
                hook.chain(),
                found.len(),
                wanted.len()
            ));
        }
    }
    None
}

/// Applies `changes` to `state`, refusing removals of what `state` does not hold: the kernel
/// state is not what the caller thinks, and only a full sync can be trusted then.
fn apply_checked(state: &mut RuleSet, changes: &Changes) -> Result<(), String> {
    for (key, target) in &changes.remove_forwards {
        if state.forwards.get(key) != Some(target) {
            return Err(format!(
                "forward {key} to {}:{} is not there to remove",
                target.ip, target.port
            ));
        }
    }
    if let Some(key) = changes
        .remove_restricted
        .iter()
        .find(|k| !state.restricted.contains(k))
    {
        return Err(format!("restriction of {key} is not there to remove"));
    }
    if let Some((key, net)) = changes
        .remove_allowed
        .iter()
        .find(|a| !state.allowed.contains(a))
    {
        return Err(format!(
            "allowed source {net} of {key} is not there to remove"
        ));
    }
    if let Some(k) = changes
        .remove_masqueraded
        .iter()
        .find(|k| !state.masqueraded.contains(k))
    {
        return Err(format!(
            "masquerade of {}:{}/{} is not there to remove",
            k.internal_ip, k.internal_port, k.protocol
        ));
    }
    state.apply(changes);
    Ok(())
}

/// Programs router namespaces with `iptables-restore`, in the original PRaaS chain layout.
pub struct IptablesBackend {
    restore: &'static str,
    save: &'static str,
}

impl IptablesBackend {
    pub fn new() -> Self {
        IptablesBackend {
            restore: "iptables-restore",
            save: "iptables-save",
        }
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
        let chains = parse_chains(&listing).map_err(|message| DataplaneError::ReadBack {
            namespace: namespace.to_string(),
            message,
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
            apply_checked(&mut state, changes).map_err(|detail| DataplaneError::Drift {
                namespace: namespace.to_string(),
                detail,
            })?;
            self.restore(namespace, &render_full(&state, [1, 1]))
        })?
    }

    fn read_back(&self, namespace: &RouterNamespace) -> Result<Option<RuleSet>, DataplaneError> {
        netns::run_in(namespace, || self.read_back_here(namespace))?
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::Forward;

    fn forward(id: &str, protocol: Protocol, ext: &str, vm: &str, int: &str) -> Forward {
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
    fn saved(rules: &RuleSet) -> String {
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
    fn full_golden() {
        let expected = r#"*nat
:custom-PREROUTING - [0:0]
:custom-POSTROUTING - [0:0]
-I PREROUTING 1 -j custom-PREROUTING
-I POSTROUTING 1 -j custom-POSTROUTING
-A custom-PREROUTING -d 203.0.113.10/32 ! -i qg-+ -m connlabel --label "127" --set
-A custom-PREROUTING -s 192.0.2.128/25 -d 203.0.113.10/32 -p tcp -m tcp --dport 4000 -j DNAT --to-destination 10.0.0.5:22
-A custom-PREROUTING -s 198.51.100.0/24 -d 203.0.113.10/32 -p tcp -m tcp --dport 4000 -j DNAT --to-destination 10.0.0.5:22
-A custom-PREROUTING -d 203.0.113.10/32 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.0.0.7:80
-A custom-PREROUTING -d 203.0.113.10/32 -p udp -m udp --dport 4001 -j DNAT --to-destination 10.0.0.6:53
-A custom-POSTROUTING -m conntrack --ctstate DNAT -m connlabel --label "127" -j MASQUERADE
-A custom-POSTROUTING -d 10.0.0.6/32 -p udp -m udp --dport 53 -m conntrack --ctstate DNAT --ctorigdst 203.0.113.10 -j MASQUERADE
COMMIT
"#;
        assert_eq!(render_full(&sample(), [0, 0]), expected);
    }

    #[test]
    fn existing_jumps_are_kept_and_duplicates_deleted() {
        let text = render_full(&RuleSet::default(), [1, 3]);
        assert_eq!(
            text,
            "*nat\n\
             :custom-PREROUTING - [0:0]\n\
             :custom-POSTROUTING - [0:0]\n\
             -D POSTROUTING -j custom-POSTROUTING\n\
             -D POSTROUTING -j custom-POSTROUTING\n\
             -A custom-POSTROUTING -m conntrack --ctstate DNAT -m connlabel --label \"127\" -j MASQUERADE\n\
             COMMIT\n"
        );
    }

    #[test]
    fn parse_of_render_round_trips() {
        for rules in [sample(), RuleSet::default()] {
            let listing = parse_save(&saved(&rules));
            assert!(listing.is_complete(), "{listing:?}");
            assert_eq!(listing.jumps, [1, 1]);
            let chains = parse_chains(&listing).unwrap();
            let parsed = rule_set_of(&chains);
            assert_eq!(parsed, rules);
            assert_eq!(structure_mismatch(&chains, &parsed), None);
        }
    }

    #[test]
    fn parses_what_iptables_save_printed() {
        // Verbatim from iptables-save v1.8.9 (nf_tables) in a test namespace.
        let text = r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:custom-POSTROUTING - [0:0]
:custom-PREROUTING - [0:0]
-A PREROUTING -j custom-PREROUTING
-A POSTROUTING -j custom-POSTROUTING
-A custom-POSTROUTING -m conntrack --ctstate DNAT -m connlabel --label "127" -j MASQUERADE
-A custom-POSTROUTING -d 10.0.0.6/32 -p udp -m udp --dport 53 -m conntrack --ctstate DNAT --ctorigdst 203.0.113.10 -j MASQUERADE
-A custom-PREROUTING -d 203.0.113.10/32 ! -i qg-+ -m connlabel --label "127" --set
-A custom-PREROUTING -s 198.51.100.0/24 -d 203.0.113.10/32 -p tcp -m tcp --dport 4000 -j DNAT --to-destination 10.0.0.5:22
-A custom-PREROUTING -d 203.0.113.10/32 -p udp -m udp --dport 4001 -j DNAT --to-destination 10.0.0.6:53
COMMIT
"#;
        let mut ssh = forward("ssh", Protocol::Tcp, "4000", "10.0.0.5", "22");
        ssh.allowed_cidrs = vec!["198.51.100.0/24".parse().unwrap()];
        let mut dns = forward("dns", Protocol::Udp, "4001", "10.0.0.6", "53");
        dns.masquerade = true;
        let expected = RuleSet::from_forwards([&ssh, &dns]).unwrap();
        let listing = parse_save(text);
        assert_eq!(parse_rules(&listing).unwrap(), expected);
        assert_eq!(
            structure_mismatch(&parse_chains(&listing).unwrap(), &expected),
            None
        );
    }

    #[test]
    fn ctorigdst_with_prefix_is_accepted() {
        let line = "-A custom-POSTROUTING -d 10.0.0.6/32 -p udp -m udp --dport 53 -m conntrack \
                    --ctstate DNAT --ctorigdst 203.0.113.10/32 -j MASQUERADE";
        assert!(matches!(parse_rule(line), Ok(Rule::Masquerade(_))));
    }

    #[test]
    fn a_malformed_line_is_an_error_naming_it() {
        for bad in [
            "-A custom-PREROUTING -d 203.0.113.10/32 -p tcp -m tcp --dport 4000 -j REDIRECT --to-ports 22",
            "-A custom-PREROUTING -d 203.0.113.10/32 -p tcp -m tcp --dport 4000:4010 -j DNAT --to-destination 10.0.0.5:22",
            "-A custom-PREROUTING -d 203.0.113.0/24 -p tcp -m tcp --dport 4000 -j DNAT --to-destination 10.0.0.5:22",
            "-A custom-PREROUTING ! -s 1.2.3.4/32 -d 203.0.113.10/32 -p tcp -m tcp --dport 4000 -j DNAT --to-destination 10.0.0.5:22",
            "-A custom-PREROUTING -d 203.0.113.10/32 -p tcp -m tcp --dport 4000 -m comment --comment \"hand made\" -j DNAT --to-destination 10.0.0.5:22",
            "-A custom-PREROUTING -d 203.0.113.10/32 ! -i qg-+ -m connlabel --label \"12\" --set",
            "-A custom-POSTROUTING -d 203.0.113.10/32 -p tcp -m tcp --dport 4000 -j DNAT --to-destination 10.0.0.5:22",
            "-A custom-POSTROUTING -m conntrack --ctstate DNAT -j MASQUERADE",
            "-A custom-PREROUTING -d 203.0.113.10/32 -p tcp -m tcp --dport 4000 -j DNAT --to-destination \"10.0.0.5:22",
        ] {
            let listing = parse_save(&format!("*nat\n:custom-PREROUTING - [0:0]\n{bad}\nCOMMIT\n"));
            assert_eq!(listing.lines.iter().flatten().count(), 1, "{bad}");
            let err = parse_rules(&listing).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn missing_chains_or_jumps_are_incomplete() {
        let full = saved(&sample());
        assert!(parse_save(&full).is_complete());
        let no_jump = full.replace("-A POSTROUTING -j custom-POSTROUTING\n", "");
        assert!(!parse_save(&no_jump).is_complete());
        assert!(!parse_save("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n").is_complete());
        // Rules of other tables never count.
        let filter_only = full.replace("*nat", "*filter");
        assert_eq!(parse_save(&filter_only), NatListing::default());
    }

    #[test]
    fn structure_drift_is_detected() {
        let rules = sample();
        let mut chains = rules_of(&rules);
        chains[Hook::Prerouting as usize].remove(0); // the hairpin label rule
        let detail = structure_mismatch(&chains, &rule_set_of(&chains)).unwrap();
        assert!(detail.contains("custom-PREROUTING"), "{detail}");

        // A restricted key that also has an unrestricted rule forwards everyone: drift.
        let mut chains = rules_of(&rules);
        let key = *rules.restricted.iter().next().unwrap();
        chains[Hook::Prerouting as usize].push(Rule::Dnat {
            source: None,
            key,
            target: rules.forwards[&key],
        });
        assert!(structure_mismatch(&chains, &rule_set_of(&chains)).is_some());
    }

    #[test]
    fn removal_of_what_is_not_there_is_refused() {
        let old = sample();
        let mut new = old.clone();
        new.forwards.clear();
        new.restricted.clear();
        new.allowed.clear();
        new.masqueraded.clear();
        let changes = old.diff(&new);
        let mut state = old.clone();
        apply_checked(&mut state, &changes).unwrap();
        assert_eq!(state, new);
        let mut empty = RuleSet::default();
        let err = apply_checked(&mut empty, &changes).unwrap_err();
        assert!(err.contains("not there"), "{err}");
        assert_eq!(empty, RuleSet::default());
    }

    #[test]
    fn remove_renders_nothing_when_nothing_is_there() {
        assert_eq!(render_remove(&NatListing::default()), None);
        let listing = parse_save(&saved(&sample()));
        assert_eq!(
            render_remove(&listing).unwrap(),
            "*nat\n\
             :custom-PREROUTING - [0:0]\n\
             :custom-POSTROUTING - [0:0]\n\
             -D PREROUTING -j custom-PREROUTING\n\
             -D POSTROUTING -j custom-POSTROUTING\n\
             -X custom-PREROUTING\n\
             -X custom-POSTROUTING\n\
             COMMIT\n"
        );
    }

    #[test]
    fn words_honour_quotes() {
        assert_eq!(
            split_words(r#"-A c -m comment --comment "a \"b\" c" --label "127""#).unwrap(),
            [
                "-A",
                "c",
                "-m",
                "comment",
                "--comment",
                "a \"b\" c",
                "--label",
                "127"
            ]
        );
        assert!(split_words("--label \"127").is_err());
    }
}

/// Tests against real namespaces; they need root and skip themselves otherwise.
#[cfg(test)]
mod netns_tests {
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

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
        new
    }

    #[test]
    fn full_sync_update_read_back_remove() {
        if !crate::simnode::kernel_tests_enabled("iptables") {
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
        assert!(matches!(err, DataplaneError::Drift { .. }), "{err}");
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
            Err(DataplaneError::ReadBack { message, .. }) => {
                assert!(message.contains(foreign), "{message}")
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
        if !crate::simnode::kernel_tests_enabled("iptables") {
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
    fn missing_namespace_and_missing_binaries() {
        if !crate::simnode::kernel_tests_enabled("iptables") {
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
        };
        let err = missing.full_sync(&ns.0, &RuleSet::default()).unwrap_err();
        assert!(matches!(err, DataplaneError::Unavailable { .. }), "{err}");

        // A restore that fails is a rejection carrying its stderr.
        let rejecting = IptablesBackend {
            restore: "false",
            save: "iptables-save",
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
