//! The mapping store against real databases: SQLite (a temporary file) and MariaDB.
//!
//! MariaDB is reached at `PRAAS_TEST_MYSQL_URL` (default
//! `mysql://praas_test:praas-test-password@127.0.0.1/praas_test`, a test user that
//! `scripts/services` creates on the loopback server). Without it the MariaDB
//! half prints why it is skipped; under CI it fails instead.

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use praas::dataplane::{PortRange, Protocol};
use praas::store::{
    ExternalPorts, ListFilter, MappingUpdate, Migration, NewMapping, Policy, Store, StoreError,
    Strategy,
};

const ROUTER: &str = "0b4ac4b5-58b2-4a4f-9a4f-1f7e2c9d0a11";

fn new(port: Option<&str>, vm: &str, int: &str) -> NewMapping {
    NewMapping {
        project_id: "p1".into(),
        router_id: ROUTER.into(),
        distributed: false,
        external_ip_address: "203.0.113.10".parse().unwrap(),
        protocol: Protocol::Tcp,
        external_ports: match port {
            Some(p) => ExternalPorts::Explicit(p.parse().unwrap()),
            None => ExternalPorts::Allocate { len: 1 },
        },
        internal_ip_address: vm.parse().unwrap(),
        internal_port_id: Some("port-1".into()),
        internal_ports: int.parse().unwrap(),
        description: "test".into(),
        allowed_cidrs: vec!["198.51.100.0/24".parse().unwrap()],
        masquerade: false,
    }
}

fn policy(first: u16, last: u16, strategy: Strategy) -> Policy {
    Policy {
        range: PortRange::new(first, last).unwrap(),
        strategy,
    }
}

on_both!(life_cycle_create_read_list_update_delete, |store: Arc<
    Store,
>| async move {
    let p = Policy::default();
    let m = store
        .create(new(Some("4000"), "10.0.0.5", "22"), &p)
        .await
        .unwrap();
    assert_eq!(m.external_ports, "4000".parse().unwrap());
    assert_eq!(store.get(&m.id).await.unwrap(), Some(m.clone()));
    let all = store.list(&ListFilter::default()).await.unwrap();
    assert_eq!(all, vec![m.clone()]);
    let by_port = ListFilter {
        external_port: Some(4000),
        ..Default::default()
    };
    assert_eq!(store.list(&by_port).await.unwrap().len(), 1);
    let other_router = ListFilter {
        router_id: Some("other".into()),
        ..Default::default()
    };
    assert!(store.list(&other_router).await.unwrap().is_empty());

    let update = MappingUpdate {
        external_ports: Some("4001".parse().unwrap()),
        masquerade: Some(true),
        ..Default::default()
    };
    let updated = store.update(&m.id, &update).await.unwrap();
    assert_eq!(
        (updated.external_ports.first(), updated.masquerade),
        (4001, true)
    );
    // The old port is free again, the new one taken.
    store
        .create(new(Some("4000"), "10.0.0.6", "22"), &p)
        .await
        .unwrap();
    assert!(matches!(
        store.create(new(Some("4001"), "10.0.0.7", "22"), &p).await,
        Err(StoreError::ExternalPortInUse { port: 4001, .. })
    ));
    assert_eq!(
        store.delete(&m.id).await.unwrap().map(|d| d.id),
        Some(m.id.clone())
    );
    assert_eq!(store.delete(&m.id).await.unwrap(), None);
    store
        .create(new(Some("4001"), "10.0.0.7", "22"), &p)
        .await
        .unwrap();
});

on_both!(
    the_same_internal_socket_twice_names_the_existing_mapping,
    |store: Arc<Store>| async move {
        let p = Policy::default();
        let first = store.create(new(None, "10.0.0.5", "22"), &p).await.unwrap();
        match store.create(new(None, "10.0.0.5", "22"), &p).await {
            Err(StoreError::InternalSocketMapped {
                mapping_id,
                port: 22,
                ..
            }) => assert_eq!(mapping_id, first.id),
            other => panic!("expected a conflict, got {other:?}"),
        }
        // Nothing of the refused mapping stayed behind.
        assert_eq!(store.list(&ListFilter::default()).await.unwrap().len(), 1);
    }
);

on_both!(
    usage_adds_up_across_reports_and_goes_with_its_mapping,
    |store: Arc<Store>| async move {
        use praas::store::UsageDelta;
        let p = Policy::default();
        let a = store
            .create(new(Some("4000"), "10.0.0.5", "22"), &p)
            .await
            .unwrap();
        let b = store
            .create(new(Some("4001"), "10.0.0.6", "22"), &p)
            .await
            .unwrap();
        let delta = |id: &str, packets, bytes| UsageDelta {
            mapping_id: id.into(),
            packets,
            bytes,
        };
        assert!(store
            .mapping_usage(&[&a.id, &b.id])
            .await
            .unwrap()
            .is_empty());
        let t1 = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let t2 = chrono::DateTime::from_timestamp(1_800_000_030, 0).unwrap();
        store
            .add_usage(&[delta(&a.id, 3, 300), delta(&b.id, 1, 60)], t1)
            .await
            .unwrap();
        // Two agents (an HA router's replicas), or the same one later: the totals add up.
        store.add_usage(&[delta(&a.id, 2, 120)], t2).await.unwrap();
        let usage = store.mapping_usage(&[&a.id, &b.id]).await.unwrap();
        assert_eq!((usage[&a.id].packets, usage[&a.id].bytes), (5, 420));
        assert_eq!(usage[&a.id].last_used_at, Some(t2));
        assert_eq!(
            usage[&a.id].last_used().as_deref(),
            Some("2027-01-15T08:00:30Z")
        );
        assert_eq!((usage[&b.id].packets, usage[&b.id].bytes), (1, 60));
        assert_eq!(usage[&b.id].last_used_at, Some(t1));
        // Usage is not a change to program.
        let generation = store.generation().await.unwrap();
        store.add_usage(&[delta(&b.id, 1, 60)], t2).await.unwrap();
        assert_eq!(store.generation().await.unwrap(), generation);

        // The row goes with its mapping; one added after the deletion is pruned.
        store.delete(&a.id).await.unwrap().unwrap();
        assert!(!store
            .mapping_usage(&[&a.id])
            .await
            .unwrap()
            .contains_key(&a.id));
        store.add_usage(&[delta(&a.id, 1, 1)], t2).await.unwrap();
        assert_eq!(store.prune_usage().await.unwrap(), 1);
        assert!(store.mapping_usage(&[&a.id]).await.unwrap().is_empty());
        assert_eq!(
            store.mapping_usage(&[&b.id]).await.unwrap()[&b.id].packets,
            2
        );
        // Many mappings at once, in chunks.
        let many: Vec<UsageDelta> = (0..1000)
            .map(|i| delta(&format!("gone-{i}"), 1, 1))
            .collect();
        store.add_usage(&many, t2).await.unwrap();
        let ids: Vec<String> = (0..1000).map(|i| format!("gone-{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        assert_eq!(store.mapping_usage(&refs).await.unwrap().len(), 1000);
        assert_eq!(store.prune_usage().await.unwrap(), 1000);
    }
);

on_both!(overlapping_external_ranges_are_refused, |store: Arc<
    Store,
>| async move {
    let p = Policy::default();
    let first = store
        .create(new(Some("5000:5010"), "10.0.0.5", "6000:6010"), &p)
        .await
        .unwrap();
    match store
        .create(new(Some("5010:5012"), "10.0.0.6", "22"), &p)
        .await
    {
        Err(StoreError::ExternalPortInUse {
            mapping_id,
            port: 5010,
            ..
        }) => assert_eq!(mapping_id, first.id),
        other => panic!("expected a conflict, got {other:?}"),
    }
});

on_both!(an_exhausted_range_is_an_answer_not_a_loop, |store: Arc<
    Store,
>| async move {
    for strategy in [Strategy::Random, Strategy::Sequential] {
        let router = format!("r-{strategy:?}");
        let p = policy(4000, 4002, strategy);
        for i in 0..3 {
            let mut m = new(None, &format!("10.0.0.{}", 10 + i), "22");
            m.router_id = router.clone();
            store.create(m, &p).await.unwrap();
        }
        let mut m = new(None, "10.0.0.99", "22");
        m.router_id = router.clone();
        assert!(matches!(
            store.create(m, &p).await,
            Err(StoreError::RangeExhausted { .. })
        ));
    }
});

on_both!(
    port_counts_are_per_router_and_protocol_and_count_only_the_range,
    |store: Arc<Store>| async move {
        let p = Policy::default();
        let on = |router: &str, protocol: Protocol, ports: &str, vm: &str| {
            let mut m = new(Some(ports), vm, "22");
            m.router_id = router.into();
            m.protocol = protocol;
            if ports.contains(':') {
                m.internal_ports = ports.parse().unwrap();
            }
            m
        };
        for m in [
            on("r1", Protocol::Tcp, "4000", "10.0.0.5"),
            // Three ports of the range edge, and two outside it (an admin's choice).
            on("r1", Protocol::Tcp, "4098:4102", "10.0.0.6"),
            on("r1", Protocol::Udp, "4000", "10.0.0.5"),
            on("r2", Protocol::Tcp, "3000", "10.0.0.5"),
            on("r3", Protocol::Tcp, "4050", "10.0.0.5"),
        ] {
            store.create(m, &p).await.unwrap();
        }
        let counts = store
            .port_counts(&["r1".into(), "r2".into(), "r9".into()], p.range)
            .await
            .unwrap();
        let count = |mappings, ports_in_range| praas::store::PortCount {
            mappings,
            ports_in_range,
        };
        let expected: std::collections::HashMap<(String, Protocol), praas::store::PortCount> = [
            (("r1".to_string(), Protocol::Tcp), count(2, 4)),
            (("r1".to_string(), Protocol::Udp), count(1, 1)),
            (("r2".to_string(), Protocol::Tcp), count(1, 0)),
        ]
        .into();
        assert_eq!(counts, expected);
        assert_eq!(
            store
                .used_ports("r1", Protocol::Tcp, p.range)
                .await
                .unwrap(),
            BTreeSet::from([4000, 4098, 4099, 4100])
        );
    }
);

on_both!(
    sequential_allocation_takes_the_lowest_free_port,
    |store: Arc<Store>| async move {
        let p = policy(4000, 4100, Strategy::Sequential);
        let a = store.create(new(None, "10.0.0.5", "22"), &p).await.unwrap();
        let b = store.create(new(None, "10.0.0.6", "22"), &p).await.unwrap();
        assert_eq!(
            (a.external_ports.first(), b.external_ports.first()),
            (4000, 4001)
        );
        store.delete(&a.id).await.unwrap();
        let c = store.create(new(None, "10.0.0.7", "22"), &p).await.unwrap();
        assert_eq!(c.external_ports.first(), 4000);
    }
);

on_both!(concurrent_creates_never_share_a_port, |store: Arc<
    Store,
>| async move {
    // 30 requests at once for a range of 20 ports: 20 succeed on distinct ports, 10 are told
    // the range is exhausted, none fails otherwise.
    let p = policy(4000, 4019, Strategy::Random);
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .create(new(None, &format!("10.0.1.{}", i + 1), "22"), &p)
                    .await
            })
        })
        .collect();
    let (mut ports, mut exhausted) = (BTreeSet::new(), 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(m) => assert!(ports.insert(m.external_ports.first()), "port given twice"),
            Err(StoreError::RangeExhausted { .. }) => exhausted += 1,
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    assert_eq!((ports.len(), exhausted), (20, 10));
});

on_both!(pagination_and_generation, |store: Arc<Store>| async move {
    let p = Policy::default();
    let g0 = store.generation().await.unwrap();
    for i in 0..5 {
        store
            .create(new(None, &format!("10.0.2.{}", i + 1), "22"), &p)
            .await
            .unwrap();
    }
    assert_eq!(store.generation().await.unwrap(), g0 + 5);
    // Each commit published the counter value it wrote, in order.
    let published: Vec<i64> = store.feed().take().into_iter().map(|(g, _)| g).collect();
    assert_eq!(published, ((g0 + 1)..=(g0 + 5)).collect::<Vec<_>>());
    let page1 = store
        .list(&ListFilter {
            limit: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    let page2 = store
        .list(&ListFilter {
            limit: Some(2),
            marker: Some(page1[1].id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let rest = store
        .list(&ListFilter {
            marker: Some(page2[1].id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut ids: Vec<_> = page1
        .iter()
        .chain(&page2)
        .chain(&rest)
        .map(|m| m.id.clone())
        .collect();
    assert_eq!(ids.len(), 5);
    ids.dedup();
    assert_eq!(ids.len(), 5);
    // Statuses do not count as changes to program.
    store
        .set_status(&[page1[0].id.clone()], praas::store::Status::Active, None)
        .await
        .unwrap();
    assert_eq!(store.generation().await.unwrap(), g0 + 5);
    // Migrating again is harmless.
    store.migrate().await.unwrap();
});

on_both!(
    the_change_log_names_what_changed_since_a_revision,
    |store: Arc<Store>| async move {
        let p = Policy::default();
        let g0 = store.generation().await.unwrap();
        let a = store.create(new(None, "10.0.3.1", "22"), &p).await.unwrap();
        let b = store.create(new(None, "10.0.3.2", "22"), &p).await.unwrap();
        let g2 = store.generation().await.unwrap();
        store
            .update(
                &a.id,
                &MappingUpdate {
                    description: Some("moved".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        store.delete(&b.id).await.unwrap();
        let g4 = store.generation().await.unwrap();
        assert_eq!(g4, g0 + 4);
        let ids = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>());
        let a_and_b = ids(&[&a.id, &b.id]);
        assert_eq!(store.changed_between(g0, g2).await.unwrap(), a_and_b);
        // A modification and a deletion are changes too.
        assert_eq!(store.changed_between(g2, g4).await.unwrap(), a_and_b);
        assert_eq!(
            store.changed_between(g0 + 2, g0 + 3).await.unwrap(),
            ids(&[&a.id])
        );
        assert_eq!(store.changed_between(g4, g4).await.unwrap(), ids(&[]));
        // Statuses are not changes to follow.
        store
            .set_status(
                std::slice::from_ref(&a.id),
                praas::store::Status::Active,
                None,
            )
            .await
            .unwrap();
        assert_eq!(
            store
                .changed_between(g4, store.generation().await.unwrap())
                .await
                .unwrap(),
            ids(&[])
        );
        // Revisions the log does not hold (before it existed, or pruned) are not guessed at.
        assert_eq!(store.changed_between(g0 - 3, g4).await.unwrap(), None);
        assert_eq!(
            store
                .changed_between(g4 - praas::store::CHANGES_KEPT - 1, g4)
                .await
                .unwrap(),
            None
        );
    }
);

#[tokio::test]
async fn past_the_cached_rows_listings_read_their_page_from_the_database() {
    let url = common::sqlite_url();
    let ours = common::open(&url).await.caching_at_most(3);
    let theirs = common::open(&url).await;
    let p = Policy::default();
    for i in 0..5 {
        ours.create(new(None, &format!("10.0.5.{}", i + 1), "22"), &p)
            .await
            .unwrap();
    }
    let all = ours.list(&ListFilter::default()).await.unwrap();
    assert_eq!(all, fresh(&theirs).await);
    let page = ListFilter {
        limit: Some(2),
        marker: Some(all[1].id.clone()),
        ..Default::default()
    };
    assert_eq!(ours.list(&page).await.unwrap(), all[2..4].to_vec());
    // Changes are seen at once: nothing is served from a stale snapshot.
    ours.delete(&all[0].id).await.unwrap();
    theirs.delete(&all[1].id).await.unwrap();
    assert_eq!(
        ours.list(&ListFilter::default()).await.unwrap(),
        all[2..].to_vec()
    );
    // Back under the limit, listings are cached again, and still right.
    theirs.delete(&all[2].id).await.unwrap();
    assert_eq!(
        ours.list(&ListFilter::default()).await.unwrap(),
        all[3..].to_vec()
    );
    ours.delete(&all[3].id).await.unwrap();
    assert_eq!(
        ours.list(&ListFilter::default()).await.unwrap(),
        all[4..].to_vec()
    );
}

#[tokio::test]
async fn the_change_log_keeps_its_latest_entries() {
    let store = common::sqlite_store().await.keeping_changes(10);
    let p = Policy::default();
    let g0 = store.generation().await.unwrap();
    for i in 0..25 {
        store
            .create(new(None, &format!("10.0.4.{}", i + 1), "22"), &p)
            .await
            .unwrap();
    }
    let g = g0 + 25;
    assert_eq!(store.generation().await.unwrap(), g);
    // Pruned at each tenth revision: the last ten (and those since) are there, older not.
    assert_eq!(
        store
            .changed_between(g - 10, g)
            .await
            .unwrap()
            .map(|s| s.len()),
        Some(10)
    );
    assert_eq!(store.changed_between(g - 20, g).await.unwrap(), None);
}

on_both!(a_listing_returns_exactly_what_was_stored, |store: Arc<
    Store,
>| async move {
    let p = Policy::default();
    let mut a = new(None, "10.0.3.1", "8000:8001");
    a.description = "\"quoted\" \\ back/slash ünïcødé 🚀 \t tab".into();
    a.internal_port_id = None;
    a.masquerade = true;
    a.external_ports = ExternalPorts::Allocate { len: 2 };
    let a = store.create(a, &p).await.unwrap();
    let mut b = new(None, "10.0.3.2", "22");
    b.protocol = Protocol::Udp;
    b.allowed_cidrs = vec![
        "192.0.2.0/24".parse().unwrap(),
        "198.51.100.7/32".parse().unwrap(),
    ];
    let b = store.create(b, &p).await.unwrap();
    store
        .set_status(
            std::slice::from_ref(&b.id),
            praas::store::Status::Error,
            Some("reason: \"x\""),
        )
        .await
        .unwrap();
    let mut want = vec![
        store.get(&a.id).await.unwrap().unwrap(),
        store.get(&b.id).await.unwrap().unwrap(),
    ];
    want.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(store.list(&ListFilter::default()).await.unwrap(), want);
    assert_eq!(
        want.iter().find(|m| m.id == a.id).unwrap().description,
        a.description
    );
});

on_both!(
    one_monitor_lease_holder_at_a_time,
    |store: Arc<Store>| async move {
        let minute = std::time::Duration::from_secs(60);
        assert!(store.acquire_lease("a", minute).await.unwrap());
        assert!(
            !store.acquire_lease("b", minute).await.unwrap(),
            "a holds it"
        );
        assert!(store.acquire_lease("a", minute).await.unwrap(), "renewal");
        store.release_lease("b").await.unwrap(); // not b's to release
        assert!(!store.acquire_lease("b", minute).await.unwrap());
        store.release_lease("a").await.unwrap();
        assert!(store
            .acquire_lease("b", std::time::Duration::from_millis(1))
            .await
            .unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(
            store.acquire_lease("c", minute).await.unwrap(),
            "b's lease ran out"
        );
        // Two contenders at once: exactly one wins.
        store.release_lease("c").await.unwrap();
        let (x, y) = tokio::join!(
            store.acquire_lease("x", minute),
            store.acquire_lease("y", minute)
        );
        assert!(x.unwrap() ^ y.unwrap());
    }
);

on_both!(
    concurrent_changes_of_one_mapping_leave_its_row_and_claims_agreeing,
    |store: Arc<Store>| async move {
        let p = Policy::default();
        let m = store
            .create(new(Some("4000"), "10.0.0.5", "22"), &p)
            .await
            .unwrap();
        // Sixteen writers move the external port while others re-point the address, as the
        // API and the monitor may at once.
        let mut tasks = vec![];
        for n in 1..=16u16 {
            let (store, id) = (store.clone(), m.id.clone());
            tasks.push(tokio::spawn(async move {
                let update = if n % 2 == 0 {
                    MappingUpdate {
                        external_ports: Some(PortRange::single(4000 + n).unwrap()),
                        ..Default::default()
                    }
                } else {
                    MappingUpdate {
                        internal_ip_address: Some(format!("10.0.0.{}", 10 + n).parse().unwrap()),
                        ..Default::default()
                    }
                };
                store.update(&id, &update).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let now = store.get(&m.id).await.unwrap().unwrap();
        // Every port the mapping does not hold now is free; its own is not.
        for port in 4000..=4016u16 {
            let other = new(Some(&port.to_string()), "10.0.1.5", &port.to_string());
            let created = store.create(other, &p).await;
            if port == now.external_ports.first() {
                assert!(
                    matches!(created, Err(StoreError::ExternalPortInUse { .. })),
                    "{port}: {created:?}"
                );
            } else {
                let other = created.unwrap_or_else(|e| panic!("port {port} leaked: {e}"));
                store.delete(&other.id).await.unwrap();
            }
        }
        // The internal socket it holds is its current one only.
        let socket = new(Some("4100"), &now.internal_ip_address.to_string(), "22");
        assert!(store.create(socket, &p).await.is_err());

        // An update racing a delete: the delete wins or the update does, and nothing is left
        // claimed by a mapping that no longer exists.
        let (a, b) = (store.clone(), store.clone());
        let id = m.id.clone();
        let (deleted, updated) = tokio::join!(async move { a.delete(&id).await }, async move {
            b.update(
                &m.id,
                &MappingUpdate {
                    external_ports: Some(PortRange::single(4050).unwrap()),
                    ..Default::default()
                },
            )
            .await
        });
        assert!(deleted.unwrap().is_some());
        assert!(
            matches!(updated, Ok(_) | Err(StoreError::NotFound { .. })),
            "{updated:?}"
        );
        for port in [now.external_ports.first(), 4050] {
            let again = new(Some(&port.to_string()), "10.0.2.5", &port.to_string());
            store
                .create(again, &p)
                .await
                .unwrap_or_else(|e| panic!("port {port} leaked: {e}"));
        }
    }
);

on_both!(
    a_held_mapping_keeps_its_status_whatever_an_agent_reports,
    |store: Arc<Store>| async move {
        use praas::store::{Hold, Status};
        let m = store
            .create(new(None, "10.0.0.5", "22"), &Policy::default())
            .await
            .unwrap();
        let hold = MappingUpdate {
            hold: Some(Hold::Keep {
                status: Status::Down,
                reason: "router has no external gateway".into(),
            }),
            ..Default::default()
        };
        store.update(&m.id, &hold).await.unwrap();
        // An agent pass that read the mapping before the hold reports it programmed.
        store
            .set_status(std::slice::from_ref(&m.id), Status::Active, None)
            .await
            .unwrap();
        let now = store.get(&m.id).await.unwrap().unwrap();
        assert_eq!(now.status, Status::Down);
        assert_eq!(
            now.status_reason.as_deref(),
            Some("router has no external gateway")
        );
        // Released, it takes the agent's word again.
        let release = MappingUpdate {
            hold: Some(Hold::Release),
            ..Default::default()
        };
        store.update(&m.id, &release).await.unwrap();
        store
            .set_status(std::slice::from_ref(&m.id), Status::Active, None)
            .await
            .unwrap();
        assert_eq!(
            store.get(&m.id).await.unwrap().unwrap().status,
            Status::Active
        );
    }
);

/// What the database holds, as a store whose cache was never filled reads it: a selective
/// filter that selects everything (every mapping is tcp here) goes to the database.
async fn fresh(store: &Store) -> Vec<praas::store::Mapping> {
    let filter = ListFilter {
        protocol: Some(Protocol::Tcp),
        ..Default::default()
    };
    store.list(&filter).await.unwrap()
}

/// Two processes on one database: `ours` lists (from its cache where nothing changed) and
/// `theirs` writes; every listing of `ours` must be what the database holds.
async fn listings_follow_every_write_of_another_process(ours: Store, theirs: Store) {
    use praas::store::Status;
    let p = Policy::default();
    let everything = ListFilter::default();
    let a = ours.create(new(None, "10.0.0.5", "22"), &p).await.unwrap();
    assert_eq!(ours.list(&everything).await.unwrap(), vec![a.clone()]);
    // Listed twice without a change: the second comes from memory, the same.
    assert_eq!(ours.list(&everything).await.unwrap(), vec![a.clone()]);

    let b = theirs
        .create(new(None, "10.0.0.6", "22"), &p)
        .await
        .unwrap();
    let listed = ours.list(&everything).await.unwrap();
    assert_eq!(listed.len(), 2, "another process's create");
    assert_eq!(listed, fresh(&theirs).await);

    theirs
        .set_status(std::slice::from_ref(&b.id), Status::Active, None)
        .await
        .unwrap();
    let listed = ours.list(&everything).await.unwrap();
    assert!(
        listed
            .iter()
            .any(|m| m.id == b.id && m.status == Status::Active),
        "another process's status: {listed:?}"
    );

    theirs
        .update(
            &a.id,
            &MappingUpdate {
                description: Some("changed elsewhere".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let listed = ours.list(&everything).await.unwrap();
    assert!(listed.iter().any(|m| m.description == "changed elsewhere"));
    theirs.delete(&b.id).await.unwrap();
    assert_eq!(ours.list(&everything).await.unwrap().len(), 1);

    // Our own writes keep the cache (and it stays right), filters and pages included.
    let mut mine = vec![];
    for n in 0..20 {
        let m = ours
            .create(new(None, &format!("10.0.1.{n}"), "22"), &p)
            .await
            .unwrap();
        mine.push(m);
    }
    ours.set_status(
        &[mine[3].id.clone(), mine[4].id.clone()],
        Status::Error,
        Some("x"),
    )
    .await
    .unwrap();
    ours.delete(&mine[0].id).await.unwrap();
    let all = ours.list(&everything).await.unwrap();
    assert_eq!(all, fresh(&theirs).await);
    let page = ListFilter {
        limit: Some(5),
        marker: Some(all[2].id.clone()),
        ..Default::default()
    };
    assert_eq!(ours.list(&page).await.unwrap(), all[3..8].to_vec());
    let port = all[7].external_ports.first();
    let by_port = ListFilter {
        external_port: Some(port),
        ..Default::default()
    };
    assert_eq!(ours.list(&by_port).await.unwrap(), vec![all[7].clone()]);
    assert_eq!(theirs.list(&by_port).await.unwrap(), vec![all[7].clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_listings_follow_every_write_of_another_process() {
    let url = common::sqlite_url();
    let (ours, theirs) = (common::open(&url).await, common::open(&url).await);
    listings_follow_every_write_of_another_process(ours, theirs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_listings_follow_every_write_of_another_process() {
    let Some(url) = common::mariadb_url("listings_follow_every_write_of_another_process").await
    else {
        return;
    };
    let (ours, theirs) = (common::open(&url).await, common::open(&url).await);
    listings_follow_every_write_of_another_process(ours, theirs).await;
}

#[tokio::test]
async fn a_missing_sqlite_directory_is_named() {
    let dir = std::env::temp_dir().join(format!("praas-missing-{}", uuid::Uuid::new_v4()));
    let url = format!("sqlite:///{}/praas.db", dir.display());
    let e = match Store::open(&url).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("opened a database in a directory that does not exist"),
    };
    assert!(
        e.contains(&format!("the directory {} does not exist", dir.display())),
        "{e}"
    );
}

#[tokio::test]
async fn an_unreachable_mysql_is_reported_within_five_seconds_naming_its_host() {
    // A port nothing listens on: the connection is refused at once; an address that drops
    // packets would take the whole timeout, which is what the bound is for.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let url = format!("mysql+pymysql://praas:s3cret@127.0.0.1:{port}/praas");
    let started = std::time::Instant::now();
    let e = match Store::open(&url).await {
        Err(e) => e,
        Ok(_) => panic!("connected to a closed port"),
    };
    assert!(started.elapsed() < std::time::Duration::from_secs(6));
    let shown = praas::util::Chain(&e).to_string();
    assert!(shown.contains(&format!("127.0.0.1:{port}")), "{shown}");
    assert!(!shown.contains("s3cret"), "{shown}");
}

#[tokio::test]
async fn db_sync_says_whether_it_created_or_found_the_schema() {
    let store = Store::open(&common::sqlite_url()).await.unwrap();
    let first = store.migrate().await.unwrap();
    assert!(matches!(first, Migration::Created { .. }), "{first}");
    let again = store.migrate().await.unwrap();
    assert!(matches!(again, Migration::Current { .. }), "{again}");
    assert_eq!(
        again.to_string(),
        format!(
            "database schema is current (version {})",
            match first {
                Migration::Created { version } => version,
                _ => unreachable!(),
            }
        )
    );
}

on_both!(
    agents_report_what_they_serve_as_differences,
    |store: Arc<Store>| async move {
        use praas::store::{AgentReport, ServedRouters};
        use std::collections::BTreeSet;
        let set = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let started = chrono::Utc::now();
        let report = |host: &str, error: Option<&str>| AgentReport {
            host: host.into(),
            started_at: started,
            last_sync_at: error.is_none().then_some(started),
            last_error: error.map(str::to_string),
        };
        assert!(store.agents().await.unwrap().is_empty());
        store
            .report_agent(
                &report("node-1", None),
                &ServedRouters::All(set(&["r1", "r2"])),
            )
            .await
            .unwrap();
        store
            .report_agent(
                &report("node-2", None),
                &ServedRouters::All(set(&["r2", "r3"])),
            )
            .await
            .unwrap();
        // node-1 loses r2 and gains r4, and its last pass failed.
        store
            .report_agent(
                &report("node-1", Some("qrouter-r4: rejected")),
                &ServedRouters::Changed {
                    added: set(&["r4"]),
                    removed: set(&["r2"]),
                },
            )
            .await
            .unwrap();
        let agents = store.agents().await.unwrap();
        let hosts: Vec<&str> = agents.iter().map(|a| a.host.as_str()).collect();
        assert_eq!(hosts, ["node-1", "node-2"]);
        assert_eq!(agents[0].routers, ["r1", "r4"]);
        assert_eq!(
            agents[0].last_error.as_deref(),
            Some("qrouter-r4: rejected")
        );
        assert_eq!(agents[0].last_sync_at, None);
        assert_eq!(agents[1].routers, ["r2", "r3"]);
        assert!(agents[1].last_sync_at.is_some());
        // Served by someone alive: asked with a time before both heartbeats.
        let asked = set(&["r1", "r2", "r3", "r4", "r5"]);
        let earlier = chrono::Utc::now() - chrono::Duration::seconds(60);
        assert_eq!(
            store.routers_served_since(&asked, earlier).await.unwrap(),
            set(&["r1", "r2", "r3", "r4"])
        );
        // Nobody reported after this moment: nothing is served by a live agent.
        let later = chrono::Utc::now() + chrono::Duration::seconds(1);
        assert!(store
            .routers_served_since(&asked, later)
            .await
            .unwrap()
            .is_empty());
        // A whole list replaces what was stored.
        store
            .report_agent(&report("node-2", None), &ServedRouters::All(set(&["r9"])))
            .await
            .unwrap();
        assert_eq!(store.agents().await.unwrap()[1].routers, ["r9"]);
    }
);

/// Writes through two Galera nodes at once conflict at commit (every write moves the
/// generation row; certification lets one node win): the loser's transaction is run again,
/// so every create, update and delete succeeds and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_through_two_galera_nodes_at_once_all_succeed() {
    let test = "writes_through_two_galera_nodes_at_once_all_succeed";
    let Some(urls) = common::galera_urls(test).await else {
        return;
    };
    let first = Arc::new(common::open(&urls[0]).await);
    let second = Arc::new(Store::open(&urls[1]).await.unwrap());
    let per_writer: u16 = 15;
    let writers: Vec<_> = (0..8u16)
        .map(|w| {
            let store = if w % 2 == 0 {
                first.clone()
            } else {
                second.clone()
            };
            tokio::spawn(async move {
                for i in 0..per_writer {
                    let port = (5000 + w * 100 + i).to_string();
                    let m = new(Some(&port), &format!("10.{w}.0.{}", i + 2), "22");
                    let created = store
                        .create(m, &policy(4000, 4100, Strategy::Sequential))
                        .await
                        .unwrap();
                    let update = MappingUpdate {
                        description: Some(format!("writer {w}")),
                        ..Default::default()
                    };
                    store.update(&created.id, &update).await.unwrap();
                    if i % 3 == 0 {
                        store.delete(&created.id).await.unwrap().unwrap();
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let kept = (0..per_writer).filter(|i| i % 3 != 0).count() * 8;
    for store in [&first, &second] {
        let all = store.list(&ListFilter::default()).await.unwrap();
        assert_eq!(all.len(), kept);
        assert!(all.iter().all(|m| m.description.starts_with("writer ")));
    }
}

#[tokio::test]
async fn a_schema_migrated_by_a_newer_praas_is_refused_with_what_to_do() {
    let url = common::sqlite_url();
    let store = common::open(&url).await;
    let known = match store.migrate().await.unwrap() {
        Migration::Current { version } => version,
        other => panic!("{other:?}"),
    };
    // What a newer praas's db-sync leaves behind: a migration this one does not have.
    let path = url.trim_start_matches("sqlite:///");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{path}"))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, installed_on, success, checksum, \
         execution_time) VALUES (99, 'future', CURRENT_TIMESTAMP, 1, x'00', 1)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let err = store.migrate().await.unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaNewer { database: 99, known: k } if k == known),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("upgrade praas on this node"),
        "{err}"
    );
}
