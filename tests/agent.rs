//! The agent between a real store and a recording dataplane: a change committed in this
//! process reaches the namespace as that change alone, and anything unusual falls back to a
//! whole, verified sync. Needs root only to create the (empty) router namespace the agent
//! checks for.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::kernel_tests_enabled;
use praas::agent::Agent;
use praas::dataplane::sync::RouterSync;
use praas::dataplane::{RouterNamespace, RuleSet};
use praas::placement::LocalNamespaces;
use praas::store::{
    ExternalPorts, Hold, ListFilter, MappingUpdate, NewMapping, Policy, Status, Store, Strategy,
};
use praas::testbed::fake_dataplane::{Call, FakeBackend, NoFlows};
use praas::testbed::simnode;

/// An empty router namespace, deleted on drop.
struct Namespace(RouterNamespace);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = simnode::run(&["ip", "netns", "del", self.0.name()], None);
    }
}

fn new(router_id: &str, vm: &str) -> NewMapping {
    NewMapping {
        project_id: "p1".into(),
        router_id: router_id.into(),
        distributed: false,
        external_ip_address: "203.0.113.10".parse().unwrap(),
        protocol: "tcp".parse().unwrap(),
        external_ports: ExternalPorts::Allocate { len: 1 },
        internal_ip_address: vm.parse().unwrap(),
        internal_port_id: None,
        internal_ports: "22".parse().unwrap(),
        description: String::new(),
        allowed_cidrs: vec![],
        masquerade: false,
    }
}

/// The rule set the store's mappings of the router should give.
async fn expected(store: &Store) -> RuleSet {
    let mappings = store.list(&ListFilter::default()).await.unwrap();
    RuleSet::from_forwards(&mappings.iter().map(|m| m.forward()).collect::<Vec<_>>()).unwrap()
}

/// The (added, removed) forwards of the last call, which must be an element update.
fn last_update(fake: &FakeBackend) -> (usize, usize) {
    match fake.calls().last() {
        Some(Call::Update { changes, .. }) => {
            (changes.add_forwards.len(), changes.remove_forwards.len())
        }
        other => panic!("expected an element update, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_changes_reach_the_namespace_as_differences() {
    if !kernel_tests_enabled("committed_changes_reach_the_namespace_as_differences") {
        return;
    }
    let router_id = uuid::Uuid::new_v4().to_string();
    let ns = Namespace(RouterNamespace::named(format!("qrouter-{router_id}")));
    simnode::run(&["ip", "netns", "add", ns.0.name()], None).unwrap();
    let dir = std::env::temp_dir().join(format!("praas-agent-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = Arc::new(
        Store::open(&format!("sqlite:///{}/praas.db", dir.display()))
            .await
            .unwrap(),
    );
    store.migrate().await.unwrap();
    let fake = Arc::new(FakeBackend::new());
    let sync = Arc::new(RouterSync::new(fake.clone(), Arc::new(NoFlows)));
    let mut agent = Agent::new(
        store.clone(),
        sync,
        Arc::new(LocalNamespaces::default()),
        Duration::from_secs(3600),
    );
    let policy = Policy {
        range: "4000:4100".parse().unwrap(),
        strategy: Strategy::Sequential,
    };
    let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();

    let a = store
        .create(new(&router_id, "10.0.0.5"), &policy)
        .await
        .unwrap();
    let b = store
        .create(new(&router_id, "10.0.0.6"), &policy)
        .await
        .unwrap();
    // The first pass knows nothing of the namespace: a whole, verified sync.
    agent.pass().await.unwrap();
    assert!(
        matches!(fake.calls()[1], Call::FullSync { forwards: 2, .. }),
        "{:?}",
        fake.calls()
    );

    // A new mapping is one added element.
    let c = store
        .create(new(&router_id, "10.0.0.7"), &policy)
        .await
        .unwrap();
    agent.pass_mappings(&ids(&[&c.id])).await.unwrap();
    assert_eq!(last_update(&fake), (1, 0));
    assert_eq!(fake.table(&ns.0), Some(expected(&store).await));

    // A changed port is one element out, one in; a deletion is one out.
    store
        .update(
            &a.id,
            &MappingUpdate {
                external_ports: Some("4050".parse().unwrap()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    agent.pass_mappings(&ids(&[&a.id])).await.unwrap();
    assert_eq!(last_update(&fake), (1, 1));
    store.delete(&b.id).await.unwrap();
    agent.pass_mappings(&ids(&[&b.id])).await.unwrap();
    assert_eq!(last_update(&fake), (0, 1));
    assert_eq!(fake.table(&ns.0), Some(expected(&store).await));

    // A mapping changed twice and one created then deleted within one batch net out.
    let d = store
        .create(new(&router_id, "10.0.0.8"), &policy)
        .await
        .unwrap();
    store.delete(&d.id).await.unwrap();
    for port in ["4060", "4061"] {
        store
            .update(
                &c.id,
                &MappingUpdate {
                    external_ports: Some(port.parse().unwrap()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    agent.pass_mappings(&ids(&[&c.id, &d.id])).await.unwrap();
    assert_eq!(last_update(&fake), (1, 1));
    assert_eq!(fake.table(&ns.0), Some(expected(&store).await));

    // A failed update is not trusted: the namespace is rewritten whole, and the mapping is
    // active once that worked.
    fake.fail_next_writes(1);
    let e = store
        .create(new(&router_id, "10.0.0.9"), &policy)
        .await
        .unwrap();
    agent.pass_mappings(&ids(&[&e.id])).await.unwrap();
    assert!(
        matches!(
            fake.calls().iter().rev().nth(1),
            Some(Call::FullSync { forwards: 3, .. })
        ),
        "{:?}",
        fake.calls()
    );
    assert_eq!(fake.table(&ns.0), Some(expected(&store).await));
    let e = store.get(&e.id).await.unwrap().unwrap();
    assert_eq!(e.status, Status::Active);

    // Statuses were recorded for every mapping the agent programmed.
    for m in store.list(&ListFilter::default()).await.unwrap() {
        assert_eq!(m.status, Status::Active, "{}", m.id);
    }

    // A mapping the monitor holds leaves the dataplane and keeps its status; released, it
    // comes back and is confirmed.
    let hold = MappingUpdate {
        hold: Some(Hold::Keep {
            status: Status::Down,
            reason: "router has no external gateway".into(),
        }),
        ..Default::default()
    };
    store.update(&e.id, &hold).await.unwrap();
    agent.pass_mappings(&ids(&[&e.id])).await.unwrap();
    assert_eq!(last_update(&fake), (0, 1));
    let held = store.get(&e.id).await.unwrap().unwrap();
    assert_eq!((held.status, held.held), (Status::Down, true));
    let programmed = fake.table(&ns.0).unwrap();
    assert!(!programmed
        .forwards
        .values()
        .any(|t| t.ip == held.internal_ip_address));
    let release = MappingUpdate {
        hold: Some(Hold::Release),
        ..Default::default()
    };
    store.update(&e.id, &release).await.unwrap();
    agent.pass_mappings(&ids(&[&e.id])).await.unwrap();
    assert_eq!(last_update(&fake), (1, 0));
    assert_eq!(
        store.get(&e.id).await.unwrap().unwrap().status,
        Status::Active
    );
    // A full pass agrees.
    agent.pass().await.unwrap();
    assert_eq!(fake.table(&ns.0), Some(expected(&store).await));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writers commit through `writer` while the agent, on `store`, reads the generation: every
/// change it sees must be accounted for, by the feed when `writer` is the agent's own store
/// (one process), by the store's change log when it is another (a separate server), or it
/// would list and rewrite everything.
async fn concurrent_changes_never_force_a_whole_sync(store: Arc<Store>, writer: Arc<Store>) {
    let router_id = uuid::Uuid::new_v4().to_string();
    let ns = Namespace(RouterNamespace::named(format!("qrouter-{router_id}")));
    simnode::run(&["ip", "netns", "add", ns.0.name()], None).unwrap();
    let fake = Arc::new(FakeBackend::new());
    let sync = Arc::new(RouterSync::new(fake.clone(), Arc::new(NoFlows)));
    let agent = Agent::new(
        store.clone(),
        sync,
        Arc::new(LocalNamespaces::default()),
        Duration::from_secs(3600),
    );
    let counters = agent.counters();
    let agent = tokio::spawn(agent.run());
    // The writes come after the first pass, so that each must be followed as a change.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while counters.full_passes.get() == 0 {
        assert!(std::time::Instant::now() < deadline, "no first pass");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let policy = Policy {
        range: "1024:65000".parse().unwrap(),
        strategy: Strategy::Random,
    };
    let total = 600;
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let (store, policy, router_id) = (writer.clone(), policy, router_id.clone());
            tokio::spawn(async move {
                for i in (w..total).step_by(16) {
                    let vm = format!("10.1.{}.{}", i / 200, i % 200 + 1);
                    store.create(new(&router_id, &vm), &policy).await.unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while fake.table(&ns.0).map(|t| t.forwards.len()) != Some(total) {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never caught up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A pass is counted once its statuses are recorded, after the kernel has the rules.
    while counters.change_passes.get() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.abort();
    let shown = format!(
        "full {}, change {}, failed {}, appeared {}",
        counters.full_passes.get(),
        counters.change_passes.get(),
        counters.failed_passes.get(),
        counters.namespaces_appeared.get()
    );
    assert_eq!(
        counters.full_passes.get(),
        1,
        "only the first pass may go over everything: {shown}"
    );
    assert!(counters.change_passes.get() > 0, "{shown}");
    assert_eq!(counters.failed_passes.get(), 0);
    assert_eq!(fake.table(&ns.0), Some(expected(&store).await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_local_changes_never_force_a_whole_sync_sqlite() {
    if kernel_tests_enabled("concurrent_local_changes_never_force_a_whole_sync_sqlite") {
        let store = Arc::new(common::sqlite_store().await);
        concurrent_changes_never_force_a_whole_sync(store.clone(), store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_process_s_changes_are_followed_by_revision_sqlite() {
    if kernel_tests_enabled("another_process_s_changes_are_followed_by_revision_sqlite") {
        let url = common::sqlite_url();
        let (ours, theirs) = (common::open(&url).await, common::open(&url).await);
        concurrent_changes_never_force_a_whole_sync(Arc::new(ours), Arc::new(theirs)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_process_s_changes_are_followed_by_revision_mariadb() {
    let name = "another_process_s_changes_are_followed_by_revision_mariadb";
    if kernel_tests_enabled(name) {
        if let Some(url) = common::mariadb_url(name).await {
            let (ours, theirs) = (common::open(&url).await, common::open(&url).await);
            concurrent_changes_never_force_a_whole_sync(Arc::new(ours), Arc::new(theirs)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_local_changes_never_force_a_whole_sync_mariadb() {
    let name = "concurrent_local_changes_never_force_a_whole_sync_mariadb";
    if kernel_tests_enabled(name) {
        if let Some(store) = common::mariadb_store(name).await {
            let store = Arc::new(store);
            concurrent_changes_never_force_a_whole_sync(store.clone(), store).await;
        }
    }
}

/// Two network nodes sharing one store: each agent reads, programs and reports only the
/// routers whose namespaces its node holds; a namespace that appears is fetched and programmed,
/// one that leaves is dropped. Needs no root: the nodes and their dataplanes are simulated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_agent_serves_only_the_routers_of_its_node() {
    use praas::testbed::StaticPlacement;
    let store = Arc::new(common::sqlite_store().await);
    let policy = Policy {
        range: "4000:4100".parse().unwrap(),
        strategy: Strategy::Sequential,
    };
    let (ra, rb, rc) = ("router-a", "router-b", "router-c");
    let mut ids = std::collections::BTreeMap::new();
    for (router, vm) in [
        (ra, "10.0.0.5"),
        (ra, "10.0.0.6"),
        (rb, "10.0.1.5"),
        (rc, "10.0.2.5"),
    ] {
        let m = store.create(new(router, vm), &policy).await.unwrap();
        ids.entry(router).or_insert_with(Vec::new).push(m.id);
    }
    let node = |names: &[&'static str]| {
        let placement = Arc::new(StaticPlacement::new(names.iter().copied()));
        let fake = Arc::new(FakeBackend::new());
        let agent = Agent::new(
            store.clone(),
            Arc::new(RouterSync::new(fake.clone(), Arc::new(NoFlows))),
            placement.clone(),
            Duration::from_secs(3600),
        );
        (placement, fake, agent)
    };
    let (place1, fake1, mut agent1) = node(&["qrouter-router-a"]);
    let (_place2, fake2, mut agent2) = node(&["qrouter-router-b"]);
    let ns = |r: &str| RouterNamespace::named(format!("qrouter-{r}"));
    let report = agent1.pass().await.unwrap();
    assert_eq!((report.namespaces, report.active), (1, 2), "{report:?}");
    let report = agent2.pass().await.unwrap();
    assert_eq!((report.namespaces, report.active), (1, 1), "{report:?}");
    let tables = |fake: &FakeBackend| {
        [ra, rb, rc].map(|r| fake.table(&ns(r)).map_or(0, |t| t.forwards.len()))
    };
    assert_eq!(tables(&fake1), [2, 0, 0]);
    assert_eq!(tables(&fake2), [0, 1, 0]);
    let status = |id: &String| {
        let store = store.clone();
        let id = id.clone();
        async move { store.get(&id).await.unwrap().unwrap().status }
    };
    assert_eq!(status(&ids[rb][0]).await, Status::Active);
    // Nobody holds router-c's namespace: its mapping waits.
    assert_eq!(status(&ids[rc][0]).await, Status::Pending);

    // router-c's namespace appears on node 1: fetched and programmed at the next look.
    place1.set(["qrouter-router-a", "qrouter-router-c"]);
    let report = agent1.check_node().await.unwrap();
    assert_eq!((report.namespaces, report.active), (1, 1), "{report:?}");
    assert_eq!(tables(&fake1), [2, 0, 1]);
    assert_eq!(status(&ids[rc][0]).await, Status::Active);
    let counters = agent1.counters();
    assert_eq!(counters.namespaces_appeared.get(), 1);

    // router-a leaves node 1: its mappings are no longer kept there, and a change to one of
    // them is not programmed by node 1.
    place1.set(["qrouter-router-c"]);
    agent1.check_node().await.unwrap();
    let calls = fake1.calls().len();
    let changed: BTreeSet<String> = [ids[ra][0].clone()].into();
    let report = agent1.pass_mappings(&changed).await.unwrap();
    assert_eq!(report, praas::agent::PassReport::default());
    assert_eq!(
        fake1.calls().len(),
        calls,
        "nothing was programmed for a router that left"
    );
    let report = agent1.pass().await.unwrap();
    assert_eq!((report.namespaces, report.active), (1, 1), "{report:?}");
}

/// A router converted from legacy to DVR: the monitor marks its mappings distributed, and the
/// agent moves their rules from `qrouter-` to `snat-` (a DVR network node holds both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_converted_to_dvr_moves_its_rules_to_the_snat_namespace() {
    use praas::testbed::StaticPlacement;
    let store = Arc::new(common::sqlite_store().await);
    let policy = Policy {
        range: "4000:4100".parse().unwrap(),
        strategy: Strategy::Sequential,
    };
    let m = store
        .create(new("router-d", "10.0.0.5"), &policy)
        .await
        .unwrap();
    let fake = Arc::new(FakeBackend::new());
    let mut agent = Agent::new(
        store.clone(),
        Arc::new(RouterSync::new(fake.clone(), Arc::new(NoFlows))),
        Arc::new(StaticPlacement::new(["qrouter-router-d", "snat-router-d"])),
        Duration::from_secs(3600),
    );
    let (legacy, snat) = (
        RouterNamespace::named("qrouter-router-d"),
        RouterNamespace::named("snat-router-d"),
    );
    let forwards = |ns: &RouterNamespace| fake.table(ns).map_or(0, |t| t.forwards.len());
    agent.pass().await.unwrap();
    assert_eq!((forwards(&legacy), forwards(&snat)), (1, 0));
    store
        .update(
            &m.id,
            &MappingUpdate {
                distributed: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    agent.pass_mappings(&[m.id.clone()].into()).await.unwrap();
    assert_eq!((forwards(&legacy), forwards(&snat)), (0, 1));
    assert_eq!(
        store.get(&m.id).await.unwrap().unwrap().status,
        Status::Active
    );
    // A fresh agent (after a restart) finds it in the same place.
    let fresh = Arc::new(FakeBackend::new());
    let mut restarted = Agent::new(
        store.clone(),
        Arc::new(RouterSync::new(fresh.clone(), Arc::new(NoFlows))),
        Arc::new(StaticPlacement::new(["qrouter-router-d", "snat-router-d"])),
        Duration::from_secs(3600),
    );
    restarted.pass().await.unwrap();
    assert_eq!(fresh.table(&snat).map(|t| t.forwards.len()), Some(1));
    assert_eq!(fresh.table(&legacy).map(|t| t.forwards.len()), None);
}

/// Rules left in a namespace by mappings deleted while no agent ran there are removed by the
/// next full pass; a namespace with nothing of ours is only read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_no_mapping_needs_are_removed_at_a_full_pass() {
    use praas::dataplane::Backend;
    use praas::testbed::StaticPlacement;
    let store = Arc::new(common::sqlite_store().await);
    let policy = Policy {
        range: "4000:4100".parse().unwrap(),
        strategy: Strategy::Sequential,
    };
    let kept = store
        .create(new("router-k", "10.0.0.5"), &policy)
        .await
        .unwrap();
    let gone = store
        .create(new("router-g", "10.0.0.6"), &policy)
        .await
        .unwrap();
    let fake = Arc::new(FakeBackend::new());
    let placement = Arc::new(StaticPlacement::new([
        "qrouter-router-k",
        "qrouter-router-g",
        "qrouter-router-empty",
    ]));
    let agent = |fake: &Arc<FakeBackend>| {
        Agent::new(
            store.clone(),
            Arc::new(RouterSync::new(fake.clone(), Arc::new(NoFlows))),
            placement.clone(),
            Duration::from_secs(3600),
        )
    };
    agent(&fake).full_pass().await.unwrap();
    let (k, g) = (
        RouterNamespace::named("qrouter-router-k"),
        RouterNamespace::named("qrouter-router-g"),
    );
    assert!(fake.table(&g).is_some_and(|t| t.forwards.len() == 1));
    // The agent stops; router-g's mapping is deleted meanwhile; a new agent starts.
    store.delete(&gone.id).await.unwrap();
    agent(&fake).full_pass().await.unwrap();
    assert_eq!(fake.table(&g), None, "the orphan rules are gone");
    assert_eq!(fake.table(&k).map(|t| t.forwards.len()), Some(1));
    let empty = RouterNamespace::named("qrouter-router-empty");
    assert!(fake.calls().iter().all(|c| !matches!(c,
        Call::Remove { namespace } | Call::FullSync { namespace, .. } if *namespace == empty.to_string())));
    assert!(fake.read_back(&empty).unwrap().is_none());
    let _ = kept;
}
