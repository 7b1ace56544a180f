//! Renders rule sets as `iptables-restore` input, each rule in the form `iptables-save` prints.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{Hook, NatListing, Rule};
use crate::dataplane::nft::render::GATEWAY_DEVICE_PREFIX;
use crate::dataplane::nft::HAIRPIN_LABEL;
use crate::dataplane::RuleSet;

impl Rule {
    /// The rule as `iptables-save` prints it, `-A chain` included.
    pub(super) fn render(&self) -> String {
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
pub(super) fn rules_of(rules: &RuleSet) -> [Vec<Rule>; 2] {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::iptables::parse_save;
    use crate::dataplane::iptables::tests::{sample, saved};

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
}
