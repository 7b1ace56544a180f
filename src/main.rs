//! `praas`: one binary, a subcommand per role.

use std::io::IsTerminal;
use std::net::SocketAddrV4;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use praas::dataplane::conntrack::Conntrack;
use praas::dataplane::sync::RouterSync;
use praas::dataplane::{Driver, Forward, Protocol, RuleSet};
use praas::simnode::{SimNode, SimNodeOptions, GATEWAY_IP, UPSTREAM_IP};

#[derive(Parser)]
#[command(
    name = "praas",
    version,
    about = "Port Address Translation as a Service for OpenStack routers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a simulated network node in throwaway namespaces, forward a port of the router's
    /// gateway to a VM and show connections going through it (needs root).
    Demo {
        /// Dataplane driver: nftables (default) or iptables.
        #[arg(long, default_value = "nftables")]
        driver: Driver,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PRAAS_LOG")
                .unwrap_or_else(|_| "praas=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo { driver } => demo(driver),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("praas: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn demo(driver: Driver) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the demo builds network namespaces and needs root");
    }
    println!("Building a simulated network node (router namespace with Neutron's gateway rules, client, 2 VMs)...");
    let node =
        SimNode::new(SimNodeOptions::default()).context("building the simulated network node")?;
    println!(
        "  router namespace {} (gateway {GATEWAY_IP} on {})",
        node.router_ns, node.gateway_device
    );
    for vm in &node.vms {
        println!("  VM {} in namespace {}", vm.ip, vm.namespace);
    }
    let _ssh = node.serve_tcp(0, 22)?;
    let _dns = node.serve_udp(1, 53)?;
    println!(
        "  echo servers: {}:22/tcp and {}:53/udp",
        node.vms[0].ip, node.vms[1].ip
    );

    let sync = RouterSync::new(Arc::from(driver.backend()?), Arc::new(Conntrack));
    let forward = |id: &str, protocol, ext: &str, vm: usize, int: &str| -> Result<Forward> {
        Ok(Forward {
            id: id.into(),
            protocol,
            external_ip: GATEWAY_IP,
            external_ports: ext.parse().map_err(anyhow::Error::msg)?,
            internal_ip: node.vms[vm].ip,
            internal_ports: int.parse().map_err(anyhow::Error::msg)?,
            allowed_cidrs: vec![],
            masquerade: false,
        })
    };
    let desired = RuleSet::from_forwards(&[
        forward("ssh-vm0", Protocol::Tcp, "4000", 0, "22")?,
        forward("dns-vm1", Protocol::Udp, "4001", 1, "53")?,
    ])?;
    let outcome = sync.sync(&node.router_ns, &desired)?;
    println!(
        "\nProgrammed with {}: {GATEWAY_IP}:4000/tcp -> {}:22, {GATEWAY_IP}:4001/udp -> {}:53 ({:?} sync, verified)",
        sync.backend().name(),
        node.vms[0].ip,
        node.vms[1].ip,
        outcome.mode
    );

    let gw = |port| SocketAddrV4::new(GATEWAY_IP, port);
    println!("\nFrom the client namespace ({UPSTREAM_IP}):");
    let answer = SimNode::tcp_exchange(&node.client_ns, None, gw(4000), "hello over tcp")?;
    println!("  tcp {GATEWAY_IP}:4000 -> VM answered: {answer}");
    let answer = SimNode::udp_exchange(&node.client_ns, None, gw(4001), "hello over udp")?;
    println!("  udp {GATEWAY_IP}:4001 -> VM answered: {answer}");

    let mut open = SimNode::connect(&node.client_ns, None, gw(4000))?;
    open.exchange("keep me open")?;
    let outcome = sync.sync(&node.router_ns, &RuleSet::default())?;
    println!(
        "\nRemoved both forwards ({:?} update, {} conntrack flows deleted)",
        outcome.mode, outcome.flows_deleted
    );
    match open.exchange("still there?") {
        Ok(answer) => bail!("an established connection outlived its forward: {answer}"),
        Err(e) => println!("  the established connection is cut: {e}"),
    }
    match SimNode::tcp_exchange(&node.client_ns, None, gw(4000), "again") {
        Ok(answer) => bail!("the removed forward still answers: {answer}"),
        Err(e) => println!("  a new connection to {GATEWAY_IP}:4000 fails: {e}"),
    }
    println!("\nDone; the namespaces are removed.");
    Ok(())
}
