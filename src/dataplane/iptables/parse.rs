//! Parses `iptables-save` output back into our rules, and checks that they are what we write.

use std::net::{self, Ipv4Addr};
use std::num::ParseIntError;

use ipnet::Ipv4Net;

use super::render::rules_of;
use super::{Hook, Rule};
use crate::dataplane::nft::render::GATEWAY_DEVICE_PREFIX;
use crate::dataplane::nft::HAIRPIN_LABEL;
use crate::dataplane::{ExternalKey, MasqueradeKey, Protocol, RuleSet, Target};

/// A line of our chains that is not one of our rules.
#[derive(Debug, thiserror::Error)]
#[error("cannot parse rule `{line}`")]
pub struct ParseError {
    /// The line as `iptables-save` printed it.
    pub line: String,
    /// What in it is not what we write.
    #[source]
    pub reason: Malformed,
}

/// What makes a saved rule not one of ours.
#[derive(Debug, thiserror::Error)]
pub enum Malformed {
    #[error("unterminated quote")]
    UnterminatedQuote,
    /// `!` in front of an option other than `-i`.
    #[error("negated {0} is not one of ours")]
    Negated(String),
    /// `!` at the end of the rule.
    #[error("dangling !")]
    DanglingNegation,
    #[error("{0} has no value")]
    NoValue(String),
    #[error("{0} given twice")]
    Repeated(String),
    #[error("option {0} is not one of ours")]
    UnknownOption(String),
    #[error("{value:?} is not an IPv4 network")]
    Network {
        value: String,
        #[source]
        source: ipnet::AddrParseError,
    },
    #[error("{value:?} is not an IPv4 address")]
    Address {
        value: String,
        #[source]
        source: net::AddrParseError,
    },
    /// A network where the rule has a single address (`what` says which one).
    #[error("{what} {net} is not a single address")]
    NotAHost { what: &'static str, net: Ipv4Net },
    /// Not a number from 1 to 65535 (a range, a service name, 0).
    #[error("{value:?} is not a single port")]
    Port {
        value: String,
        #[source]
        source: Option<ParseIntError>,
    },
    #[error("protocol {0:?} is not tcp or udp")]
    Protocol(String),
    #[error("DNAT target {0:?} has no port")]
    TargetWithoutPort(String),
    #[error("DNAT target {value:?} is not address:port")]
    Target {
        value: String,
        #[source]
        source: net::AddrParseError,
    },
    /// A part our rules always have is absent (`no destination port`).
    #[error("no {0}")]
    Missing(&'static str),
    /// `-A` names neither of our chains.
    #[error("not a rule of our chains")]
    NotOurChain,
    #[error("not a hairpin label rule")]
    NotHairpinLabel,
    #[error("not a DNAT rule of ours")]
    NotOurDnat,
    #[error("not the hairpin masquerade rule")]
    NotHairpinMasquerade,
    #[error("not a masquerade rule of ours")]
    NotOurMasquerade,
    /// A target (`-j`, or `(none)`) that our rules do not use in this chain.
    #[error("target {jump} is not used in {chain}")]
    UnusedTarget { jump: String, chain: &'static str },
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
fn split_words(line: &str) -> Result<Vec<String>, Malformed> {
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
                        Some('\\') => w.push(chars.next().ok_or(Malformed::UnterminatedQuote)?),
                        Some(c) => w.push(c),
                        None => return Err(Malformed::UnterminatedQuote),
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

fn net(s: &str) -> Result<Ipv4Net, Malformed> {
    if s.contains('/') {
        s.parse().map_err(|source| Malformed::Network {
            value: s.to_string(),
            source,
        })
    } else {
        let ip: Ipv4Addr = s.parse().map_err(|source| Malformed::Address {
            value: s.to_string(),
            source,
        })?;
        Ok(Ipv4Net::from(ip))
    }
}

/// The address of a `/32` network.
fn host(n: Option<Ipv4Net>, what: &'static str) -> Result<Ipv4Addr, Malformed> {
    match n {
        Some(n) if n.prefix_len() == 32 => Ok(n.addr()),
        Some(net) => Err(Malformed::NotAHost { what, net }),
        None => Err(Malformed::Missing(what)),
    }
}

fn port(s: &str) -> Result<u16, Malformed> {
    let not_a_port = |source| Malformed::Port {
        value: s.to_string(),
        source,
    };
    match s.parse::<u16>() {
        Ok(0) => Err(not_a_port(None)),
        Ok(p) => Ok(p),
        Err(e) => Err(not_a_port(Some(e))),
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T, option: &str) -> Result<(), Malformed> {
    if slot.replace(value).is_some() {
        return Err(Malformed::Repeated(option.to_string()));
    }
    Ok(())
}

fn options(words: &[String]) -> Result<Options, Malformed> {
    let mut o = Options::default();
    let mut words = words.iter().map(String::as_str);
    let mut negated = false;
    while let Some(word) = words.next() {
        if word == "!" {
            negated = true;
            continue;
        }
        if negated && word != "-i" {
            return Err(Malformed::Negated(word.to_string()));
        }
        if word == "--set" {
            o.label_set = true;
            continue;
        }
        let value = words
            .next()
            .ok_or_else(|| Malformed::NoValue(word.to_string()))?;
        match word {
            "-A" => set_once(&mut o.chain, value.to_string(), word)?,
            "-s" => set_once(&mut o.source, net(value)?, word)?,
            "-d" => set_once(&mut o.destination, net(value)?, word)?,
            "-i" => set_once(&mut o.input, (negated, value.to_string()), word)?,
            "-p" => {
                let p = value
                    .parse::<Protocol>()
                    .map_err(|_| Malformed::Protocol(value.to_string()))?;
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
                    .ok_or_else(|| Malformed::TargetWithoutPort(value.to_string()))?;
                let ip = ip.parse().map_err(|source| Malformed::Target {
                    value: value.to_string(),
                    source,
                })?;
                set_once(&mut o.to_destination, Target { ip, port: port(p)? }, word)?
            }
            other => return Err(Malformed::UnknownOption(other.to_string())),
        }
        negated = false;
    }
    if negated {
        return Err(Malformed::DanglingNegation);
    }
    Ok(o)
}

/// Parses one `-A` line of our chains.
fn parse_rule(line: &str) -> Result<Rule, ParseError> {
    let fail = |reason: Malformed| ParseError {
        line: line.to_string(),
        reason,
    };
    let words = split_words(line).map_err(fail)?;
    let o = options(&words).map_err(fail)?;
    let hook = o
        .chain
        .as_deref()
        .and_then(Hook::of_chain)
        .ok_or_else(|| fail(Malformed::NotOurChain))?;
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
                return Err(fail(Malformed::NotHairpinLabel));
            }
            Rule::HairpinLabel {
                gateway: host(o.destination, "destination").map_err(fail)?,
            }
        }
        (Hook::Prerouting, Some("DNAT")) => {
            let protocol = o
                .protocol
                .ok_or_else(|| fail(Malformed::Missing("protocol")))?;
            let ok = only(&[protocol.as_str()])
                && o.input.is_none()
                && o.label.is_none()
                && !o.label_set
                && o.ctstate.is_none()
                && o.ctorigdst.is_none();
            if !ok {
                return Err(fail(Malformed::NotOurDnat));
            }
            Rule::Dnat {
                source: o.source,
                key: ExternalKey {
                    ip: host(o.destination, "destination").map_err(fail)?,
                    protocol,
                    port: o
                        .dport
                        .ok_or_else(|| fail(Malformed::Missing("destination port")))?,
                },
                target: o
                    .to_destination
                    .ok_or_else(|| fail(Malformed::Missing("DNAT target")))?,
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
                return Err(fail(Malformed::NotHairpinMasquerade));
            }
            Rule::HairpinMasquerade
        }
        (Hook::Postrouting, Some("MASQUERADE")) => {
            let protocol = o
                .protocol
                .ok_or_else(|| fail(Malformed::Missing("protocol")))?;
            let ok = only(&[protocol.as_str(), "conntrack"])
                && o.ctstate.as_deref() == Some("DNAT")
                && o.source.is_none()
                && o.input.is_none()
                && o.label.is_none()
                && !o.label_set
                && o.to_destination.is_none();
            if !ok {
                return Err(fail(Malformed::NotOurMasquerade));
            }
            Rule::Masquerade(MasqueradeKey {
                external_ip: host(o.ctorigdst, "original destination").map_err(fail)?,
                internal_ip: host(o.destination, "destination").map_err(fail)?,
                protocol,
                internal_port: o
                    .dport
                    .ok_or_else(|| fail(Malformed::Missing("destination port")))?,
            })
        }
        (_, jump) => {
            return Err(fail(Malformed::UnusedTarget {
                jump: jump.unwrap_or("(none)").to_string(),
                chain: hook.chain(),
            }))
        }
    };
    Ok(rule)
}

/// Parses the lines of both our chains into rules, indexed by [`Hook`].
pub(super) fn parse_chains(listing: &NatListing) -> Result<[Vec<Rule>; 2], ParseError> {
    let mut chains: [Vec<Rule>; 2] = Default::default();
    for hook in Hook::ALL {
        for line in &listing.lines[hook as usize] {
            chains[hook as usize].push(parse_rule(line)?);
        }
    }
    Ok(chains)
}

/// The rule set that parsed rules program (structure rules carry no elements).
pub(super) fn rule_set_of(chains: &[Vec<Rule>; 2]) -> RuleSet {
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
    // This layout has no counters: what would be counted follows from the forwards.
    set.counted = RuleSet::counted_of(&set.forwards);
    set
}

/// Parses the lines of our chains into the rule set they program. Lines that are not rules of
/// ours are errors naming the line.
pub fn parse_rules(listing: &NatListing) -> Result<RuleSet, ParseError> {
    parse_chains(listing).map(|chains| rule_set_of(&chains))
}

/// Why the chains are not what `rules` renders to, if they are not.
pub(super) fn structure_mismatch(chains: &[Vec<Rule>; 2], rules: &RuleSet) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::iptables::tests::{forward, sample, saved};

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
            assert!(err.to_string().contains(bad), "{err}");
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
