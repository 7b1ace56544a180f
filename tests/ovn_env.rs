//! The OVN test environment itself (`scripts/ovn`, `praas::testbed::ovn`), proved with real
//! packets: a router with a gateway on the external network, SNAT of its tenant subnet, and a
//! load balancer on the gateway address (the way port forwarding is done in OVN), written with
//! ovn-nbctl as a cloud would.
//! Needs root and the OVN packages; skipped with a reason otherwise (and failed under CI).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use praas::testbed::ovn::{self, OvnEnv, OvnNamespace};
use praas::testbed::simnode::kernel_tests_enabled;

const SWITCH: &str = "praas-test-ls";
const VM_PORT: &str = "praas-test-vm";
const VM_MAC: &str = "fa:16:3e:00:00:05";
const VM_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
const ROUTER: &str = "praas-test-lr";
const EXTERNAL_SWITCH: &str = "praas-test-ext";
const GATEWAY_PORT: &str = "praas-test-lr-gw";
const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 50);
const LB_TCP: &str = "praas-test-lb-tcp";
const LB_UDP: &str = "praas-test-lb-udp";

/// The northbound rows of the test, deleted again when dropped (also when the test fails).
struct Topology<'a> {
    env: &'a OvnEnv,
}

impl Topology<'_> {
    /// Deletes what an earlier run may have left, then builds the topology in one transaction
    /// and waits until the chassis applies it.
    fn build(env: &OvnEnv) -> Topology<'_> {
        let topology = Topology { env };
        topology.delete();
        let vm_addresses = format!("{VM_MAC} {VM_IP}");
        let gw_vip = format!("{GATEWAY_IP}:4000");
        let backend = format!("{VM_IP}:8080");
        let commands: Vec<Vec<&str>> = vec![
            // The tenant network and its VM.
            vec!["ls-add", SWITCH],
            vec![
                "set",
                "Logical_Switch",
                SWITCH,
                "other_config:subnet=10.0.0.0/24",
            ],
            vec!["lsp-add", SWITCH, VM_PORT],
            vec!["lsp-set-addresses", VM_PORT, &vm_addresses],
            // The router, on the tenant network as 10.0.0.1.
            vec!["lr-add", ROUTER],
            vec![
                "lrp-add",
                ROUTER,
                "praas-test-lr-int",
                "fa:16:3e:00:00:01",
                "10.0.0.1/24",
            ],
            vec!["lsp-add", SWITCH, "praas-test-ls-lr"],
            vec!["lsp-set-type", "praas-test-ls-lr", "router"],
            vec!["lsp-set-addresses", "praas-test-ls-lr", "router"],
            vec![
                "lsp-set-options",
                "praas-test-ls-lr",
                "router-port=praas-test-lr-int",
            ],
            // The external network: physnet1 (br-ex) through a localnet port.
            vec!["ls-add", EXTERNAL_SWITCH],
            vec!["lsp-add", EXTERNAL_SWITCH, "praas-test-ext-localnet"],
            vec!["lsp-set-type", "praas-test-ext-localnet", "localnet"],
            vec!["lsp-set-addresses", "praas-test-ext-localnet", "unknown"],
            vec![
                "lsp-set-options",
                "praas-test-ext-localnet",
                "network_name=physnet1",
            ],
            // The router's gateway on it, bound to the chassis; SNAT of the tenant subnet.
            vec![
                "lrp-add",
                ROUTER,
                GATEWAY_PORT,
                "fa:16:3e:00:00:0a",
                "203.0.113.10/24",
            ],
            vec!["lrp-set-gateway-chassis", GATEWAY_PORT, &env.chassis, "1"],
            vec!["lsp-add", EXTERNAL_SWITCH, "praas-test-ext-lr"],
            vec!["lsp-set-type", "praas-test-ext-lr", "router"],
            vec!["lsp-set-addresses", "praas-test-ext-lr", "router"],
            vec![
                "lsp-set-options",
                "praas-test-ext-lr",
                "router-port=praas-test-lr-gw",
            ],
            vec!["lr-nat-add", ROUTER, "snat", "203.0.113.10", "10.0.0.0/24"],
            // The forward: gateway:4000 -> VM:8080, TCP and UDP, on the router and (for
            // hairpin) on the tenant switch.
            vec!["lb-add", LB_TCP, &gw_vip, &backend, "tcp"],
            vec!["lb-add", LB_UDP, &gw_vip, &backend, "udp"],
            vec!["lr-lb-add", ROUTER, LB_TCP],
            vec!["lr-lb-add", ROUTER, LB_UDP],
            vec!["ls-lb-add", SWITCH, LB_TCP],
            vec!["ls-lb-add", SWITCH, LB_UDP],
        ];
        let mut args = vec!["--wait=hv"];
        for (i, command) in commands.iter().enumerate() {
            if i > 0 {
                args.push("--");
            }
            args.extend(command);
        }
        env.nbctl(&args)
            .expect("the topology in the northbound database");
        topology
    }

    fn delete(&self) {
        let result = self.env.nbctl(&[
            "--if-exists",
            "lr-del",
            ROUTER,
            "--",
            "--if-exists",
            "ls-del",
            SWITCH,
            "--",
            "--if-exists",
            "ls-del",
            EXTERNAL_SWITCH,
            "--",
            "--if-exists",
            "lb-del",
            LB_TCP,
            "--",
            "--if-exists",
            "lb-del",
            LB_UDP,
        ]);
        if let Err(e) = result {
            eprintln!("deleting the test's northbound rows: {e}");
        }
    }
}

impl Drop for Topology<'_> {
    fn drop(&mut self) {
        self.delete();
    }
}

/// `f` until it succeeds, at most `attempts` times: the first packet towards an address OVN
/// has not resolved yet is turned into an ARP request, and the sender retransmits.
fn with_retries<T>(what: &str, attempts: u32, f: impl Fn() -> std::io::Result<T>) -> T {
    let mut last = None;
    for attempt in 1..=attempts {
        match f() {
            Ok(v) => {
                if attempt > 1 {
                    eprintln!("{what}: answered at attempt {attempt}");
                }
                return v;
            }
            Err(e) => last = Some(e),
        }
    }
    panic!(
        "{what}: no answer after {attempts} attempts: {:?}",
        last.unwrap()
    );
}

#[test]
fn a_load_balancer_on_the_gateway_forwards_to_the_vm_with_the_client_address_and_snat_works() {
    let test = "ovn_env";
    if !kernel_tests_enabled(test) || !ovn::tests_enabled(test) {
        return;
    }
    let started = Instant::now();
    let env = OvnEnv::start().expect("scripts/ovn up");
    match env.started_in() {
        Some(took) => eprintln!("{test}: scripts/ovn up from cold took {took:.2?}"),
        None => eprintln!("{test}: OVN was already running"),
    }

    let built = Instant::now();
    let _topology = Topology::build(&env);
    let client = OvnNamespace::external(&env, "203.0.113.50/24".parse().unwrap(), None)
        .expect("external client namespace on br-ex");
    let vm = OvnNamespace::vm(
        &env,
        VM_PORT,
        VM_MAC,
        "10.0.0.5/24".parse().unwrap(),
        Ipv4Addr::new(10, 0, 0, 1),
    )
    .expect("VM namespace on br-int");
    env.wait_port_up(VM_PORT).expect("the VM's port bound");
    eprintln!(
        "{test}: topology and namespaces ready in {:.2?}",
        built.elapsed()
    );

    // In: the forward, with the client's own address seen by the VM.
    let _tcp = vm.serve_tcp(8080).unwrap();
    let _udp = vm.serve_udp(8080).unwrap();
    let vip = SocketAddrV4::new(GATEWAY_IP, 4000);
    let first = Instant::now();
    let answer = with_retries("tcp to the forward", 3, || {
        client.tcp_exchange(vip, "hello")
    });
    eprintln!(
        "{test}: first forwarded TCP answer after {:.2?}",
        first.elapsed()
    );
    assert_eq!(answer, format!("from={CLIENT_IP} hello"));
    let answer = with_retries("udp to the forward", 3, || client.udp_exchange(vip, "q"));
    assert_eq!(answer, format!("from={CLIENT_IP} q"));
    // Only that port is forwarded.
    assert!(client
        .tcp_exchange(SocketAddrV4::new(GATEWAY_IP, 4001), "x")
        .is_err());

    // Out: the VM reaches the external network through the router's SNAT.
    let _out_tcp = client.serve_tcp(9000).unwrap();
    let _out_udp = client.serve_udp(9000).unwrap();
    let outside = SocketAddrV4::new(CLIENT_IP, 9000);
    let answer = with_retries("tcp from the VM", 3, || vm.tcp_exchange(outside, "out"));
    assert_eq!(answer, format!("from={GATEWAY_IP} out"));
    let answer = with_retries("udp from the VM", 3, || vm.udp_exchange(outside, "out"));
    assert_eq!(answer, format!("from={GATEWAY_IP} out"));

    // Both directions at once, a few times over.
    for i in 0..20 {
        let msg = format!("m{i}");
        assert_eq!(
            client.tcp_exchange(vip, &msg).unwrap(),
            format!("from={CLIENT_IP} {msg}")
        );
        assert_eq!(
            vm.tcp_exchange(outside, &msg).unwrap(),
            format!("from={GATEWAY_IP} {msg}")
        );
    }
    eprintln!(
        "{test}: test took {:.2?} (environment included)",
        started.elapsed()
    );
}
