//! Quotas in the store, on SQLite and MariaDB (and across two Galera nodes when
//! `PRAAS_TEST_GALERA_URLS` names a cluster): concurrent writers never take a project past its
//! limits, and every refusal says what the project holds, its limit and what was asked.

#[macro_use]
mod common;

use std::sync::Arc;

use praas::dataplane::{PortRange, Protocol};
use praas::model::{Limit, Resource};
use praas::store::{
    ExternalPorts, ListFilter, Mapping, MappingUpdate, NewMapping, Policy, QuotaChange, Quotas,
    Store, StoreError, Strategy, Usage,
};

const ROUTER: &str = "0b4ac4b5-58b2-4a4f-9a4f-1f7e2c9d0a11";

/// A mapping of project `project` to 10.(i/250).(i%250+1):22, on external ports `ports`
/// (`None`: one allocated port).
fn new(project: &str, i: u32, ports: Option<String>) -> NewMapping {
    NewMapping {
        project_id: project.into(),
        router_id: ROUTER.into(),
        distributed: false,
        external_ip_address: "203.0.113.10".parse().unwrap(),
        protocol: Protocol::Tcp,
        external_ports: match ports {
            Some(p) => ExternalPorts::Explicit(p.parse().unwrap()),
            None => ExternalPorts::Allocate { len: 1 },
        },
        internal_ip_address: format!("10.0.{}.{}", i / 250, i % 250 + 1).parse().unwrap(),
        internal_port_id: None,
        internal_ports: "22".parse().unwrap(),
        description: String::new(),
        allowed_cidrs: vec![],
        masquerade: false,
    }
}

fn policy() -> Policy {
    Policy {
        range: PortRange::new(4000, 4999).unwrap(),
        strategy: Strategy::Random,
    }
}

fn limits(mappings: i64, external_ports: i64) -> QuotaChange {
    QuotaChange {
        mappings: Some(Limit::from_i64(mappings).unwrap()),
        external_ports: Some(Limit::from_i64(external_ports).unwrap()),
    }
}

/// A refusal's (resource, used, limit, requested); panics on anything else.
fn refusal(result: Result<Mapping, StoreError>) -> (Resource, u64, u64, u64) {
    match result {
        Err(StoreError::QuotaExceeded {
            resource,
            used,
            limit,
            requested,
            ..
        }) => (resource, used, limit, requested),
        other => panic!("expected a quota refusal, got {other:?}"),
    }
}

/// Runs the creates at once, each on `stores[i % stores.len()]`; returns what succeeded and
/// the refusals, and fails on any other error.
async fn at_once(
    stores: &[Arc<Store>],
    creates: Vec<NewMapping>,
) -> (Vec<Mapping>, Vec<(Resource, u64, u64, u64)>) {
    let tasks: Vec<_> = creates
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let store = stores[i % stores.len()].clone();
            tokio::spawn(async move { store.create(m, &policy()).await })
        })
        .collect();
    let (mut created, mut refused) = (vec![], vec![]);
    for t in tasks {
        match t.await.unwrap() {
            Ok(m) => created.push(m),
            other => refused.push(refusal(other)),
        }
    }
    (created, refused)
}

/// 64 creates of project p1 at once, half on chosen ports and half allocated, under a limit
/// of 10 mappings.
async fn sixty_four_creates_under_a_limit_of_ten(stores: &[Arc<Store>]) {
    stores[0].set_quotas("p1", &limits(10, -1)).await.unwrap();
    let creates = (0..64)
        .map(|i| new("p1", i, (i % 2 == 0).then(|| (3000 + i).to_string())))
        .collect();
    let (created, refused) = at_once(stores, creates).await;
    assert_eq!((created.len(), refused.len()), (10, 54));
    // A refusal comes only once 10 exist: each saw exactly 10.
    assert!(
        refused
            .iter()
            .all(|r| *r == (Resource::Mappings, 10, 10, 1)),
        "{refused:?}"
    );
    for store in stores {
        let p1 = ListFilter {
            project_id: Some("p1".into()),
            ..Default::default()
        };
        assert_eq!(store.list(&p1).await.unwrap().len(), 10);
        assert_eq!(
            store.usage("p1").await.unwrap(),
            Usage {
                mappings: 10,
                external_ports: 10
            }
        );
    }
}

on_both!(
    sixty_four_parallel_creates_never_pass_a_limit_of_ten_mappings,
    |store: Arc<Store>| async move {
        sixty_four_creates_under_a_limit_of_ten(&[store]).await;
    }
);

/// Galera: the same, the creates split across two nodes, where a row lock is not seen by the
/// other node and only the conflict at commit keeps the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_parallel_creates_across_two_galera_nodes_never_pass_a_limit_of_ten() {
    let test = "sixty_four_parallel_creates_across_two_galera_nodes_never_pass_a_limit_of_ten";
    let Some(urls) = common::galera_urls(test).await else {
        return;
    };
    let first = Arc::new(common::open(&urls[0]).await);
    let second = Arc::new(Store::open(&urls[1]).await.unwrap());
    // The second node must have applied the schema and the quota before the creates start.
    first.set_quotas("p1", &limits(10, -1)).await.unwrap();
    let started = std::time::Instant::now();
    while second.quotas_of("p1").await.ok().map(|q| q.mappings) != Some(Limit::AtMost(10)) {
        assert!(
            started.elapsed().as_secs() < 10,
            "node 2 never saw the quota"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    sixty_four_creates_under_a_limit_of_ten(&[first, second]).await;
}

on_both!(
    ranges_hold_as_many_external_ports_as_they_cover,
    |store: Arc<Store>| async move {
        store.set_quotas("p1", &limits(-1, 100)).await.unwrap();
        // 64 ranges of 10 ports at once under a limit of 100 ports: exactly 10 pass.
        let creates = (0..64)
            .map(|i| {
                let first = 4000 + 10 * i;
                new("p1", i, Some(format!("{first}:{}", first + 9)))
            })
            .collect();
        let (mut created, refused) = at_once(std::slice::from_ref(&store), creates).await;
        assert_eq!((created.len(), refused.len()), (10, 54));
        assert!(
            refused
                .iter()
                .all(|r| *r == (Resource::ExternalPorts, 100, 100, 10)),
            "{refused:?}"
        );
        // Full: not even one port more.
        assert_eq!(
            refusal(store.create(new("p1", 100, None), &policy()).await),
            (Resource::ExternalPorts, 100, 100, 1)
        );
        // A delete frees its ports: 10 back, so 11 are refused and 10 fit.
        let gone = created.pop().unwrap();
        store.delete(&gone.id).await.unwrap().unwrap();
        assert_eq!(store.usage("p1").await.unwrap().external_ports, 90);
        assert_eq!(
            refusal(
                store
                    .create(new("p1", 101, Some("6000:6010".into())), &policy())
                    .await
            ),
            (Resource::ExternalPorts, 90, 100, 11)
        );
        store
            .create(new("p1", 102, Some("6000:6009".into())), &policy())
            .await
            .unwrap();
        // Another project's mappings count against its own quota only.
        store
            .create(new("p2", 103, Some("7000:7099".into())), &policy())
            .await
            .unwrap();
        assert_eq!(store.usage("p1").await.unwrap().external_ports, 100);
    }
);

on_both!(
    an_update_that_lengthens_a_range_is_held_to_the_quota,
    |store: Arc<Store>| async move {
        store.set_quotas("p1", &limits(-1, 24)).await.unwrap();
        let mut ids = vec![];
        for i in 0..16 {
            let port = (5000 + 10 * i).to_string();
            ids.push(
                store
                    .create(new("p1", i, Some(port)), &policy())
                    .await
                    .unwrap()
                    .id,
            );
        }
        // 16 updates at once, each lengthening its own mapping by one port: 8 fit.
        let tasks: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let (store, id) = (store.clone(), id.clone());
                let first = 5000 + 10 * i as u16;
                let update = MappingUpdate {
                    external_ports: Some(PortRange::new(first, first + 1).unwrap()),
                    ..Default::default()
                };
                tokio::spawn(async move { store.update(&id, &update).await })
            })
            .collect();
        let (mut grown, mut refused) = (0, vec![]);
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => grown += 1,
                other => refused.push(refusal(other)),
            }
        }
        assert_eq!(grown, 8);
        assert!(
            refused
                .iter()
                .all(|r| *r == (Resource::ExternalPorts, 24, 24, 1)),
            "{refused:?}"
        );
        assert_eq!(store.usage("p1").await.unwrap().external_ports, 24);
        let shorter = |first: u16| MappingUpdate {
            external_ports: Some(PortRange::single(first).unwrap()),
            ..Default::default()
        };
        let grown_ids: Vec<Mapping> = store
            .list(&ListFilter::default())
            .await
            .unwrap()
            .into_iter()
            .filter(|m| m.external_ports.len() == 2)
            .collect();
        // Shortening frees ports, moving keeps the count, other changes are never refused.
        store
            .update(
                &grown_ids[0].id,
                &shorter(grown_ids[0].external_ports.first()),
            )
            .await
            .unwrap();
        store
            .update(&grown_ids[1].id, &shorter(9000))
            .await
            .unwrap();
        assert_eq!(store.usage("p1").await.unwrap().external_ports, 22);
        store.set_quotas("p1", &limits(-1, 5)).await.unwrap();
        let described = MappingUpdate {
            description: Some("over the lowered limit, still changeable".into()),
            ..Default::default()
        };
        store.update(&ids[0], &described).await.unwrap();
        let moved = MappingUpdate {
            external_ports: Some(PortRange::new(9100, 9101).unwrap()),
            ..Default::default()
        };
        store.update(&grown_ids[2].id, &moved).await.unwrap();
    }
);

#[tokio::test]
async fn projects_without_their_own_quota_have_the_defaults_until_an_admin_sets_one() {
    let defaults = Quotas {
        mappings: Limit::AtMost(2),
        external_ports: Limit::AtMost(1010),
    };
    let store = common::sqlite_store().await.with_quota_defaults(defaults);
    assert_eq!(store.quotas_of("p1").await.unwrap(), defaults);
    assert!(store.projects_with_own_quotas().await.unwrap().is_empty());
    for i in 0..2 {
        store.create(new("p1", i, None), &policy()).await.unwrap();
    }
    assert_eq!(
        refusal(store.create(new("p1", 2, None), &policy()).await),
        (Resource::Mappings, 2, 2, 1)
    );
    // An admin gives p1 a third mapping; the ports keep their default.
    let only_mappings = QuotaChange {
        mappings: Some(Limit::AtMost(3)),
        ..Default::default()
    };
    let p1 = Quotas {
        mappings: Limit::AtMost(3),
        external_ports: Limit::AtMost(1010),
    };
    assert_eq!(store.set_quotas("p1", &only_mappings).await.unwrap(), p1);
    assert_eq!(
        store.projects_with_own_quotas().await.unwrap(),
        vec![("p1".to_string(), p1)]
    );
    store.create(new("p1", 3, None), &policy()).await.unwrap();
    assert_eq!(
        refusal(store.create(new("p1", 4, None), &policy()).await),
        (Resource::Mappings, 3, 3, 1)
    );
    // p2 still has the defaults.
    assert_eq!(store.quotas_of("p2").await.unwrap(), defaults);
    // Back to the defaults: nothing is removed, and nothing more is allowed.
    assert!(store.reset_quotas("p1").await.unwrap());
    assert!(!store.reset_quotas("p1").await.unwrap());
    assert_eq!(store.quotas_of("p1").await.unwrap(), defaults);
    assert_eq!(store.usage("p1").await.unwrap().mappings, 3);
    assert_eq!(
        refusal(store.create(new("p1", 5, None), &policy()).await),
        (Resource::Mappings, 3, 2, 1)
    );
    // -1: unlimited for p1; 0: nothing at all for p2.
    store.set_quotas("p1", &limits(-1, -1)).await.unwrap();
    store.set_quotas("p2", &limits(0, 10)).await.unwrap();
    for i in 6..20 {
        store.create(new("p1", i, None), &policy()).await.unwrap();
    }
    assert_eq!(
        refusal(store.create(new("p2", 30, None), &policy()).await),
        (Resource::Mappings, 0, 0, 1)
    );
    let listed: Vec<String> = store
        .projects_with_own_quotas()
        .await
        .unwrap()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(listed, ["p1", "p2"]);
    // The refusal reads as a sentence a caller understands.
    let e = store
        .create(new("p2", 31, None), &policy())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "quota exceeded for mappings of project p2: 0 of 0 in use, 1 more requested"
    );
}
