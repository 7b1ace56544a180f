//! The Proxy CLI (`praas pat …`) against PRaaS served over HTTP with the real Keystone and
//! Neutron of `scripts/dev-cloud`.
//!
//! They need the dev cloud (`scripts/dev-cloud up`), found at `PRAAS_CLOUD_DIR` (default
//! `/var/tmp/praas-dev-cloud`). Without it the tests print one line and skip; under CI they
//! fail instead (`scripts/test` brings it up).

mod common;
#[path = "openstack/support.rs"]
mod support;

use serde_json::{json, Value};

use support::{Cloud, KEYSTONE};

/// The Proxy CLI (`praas pat …`) against PRaaS served over HTTP with the real Keystone and
/// Neutron: a member creates, lists, changes and removes a mapping of its VM as the user of
/// clouds.yaml; a reader cannot create; another project cannot see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_cli_manages_a_members_mappings() {
    let test = "the_proxy_cli_manages_a_members_mappings";
    let _shared = KEYSTONE.read().await;
    let Some(cloud) = Cloud::find(test) else {
        return;
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = cloud.app().await;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let clouds = cloud.dir.join("clouds.yaml");
    let pat = |user: &'static str, args: Vec<String>| {
        let (clouds, url) = (clouds.clone(), url.clone());
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_praas"))
                .arg("pat")
                .arg("--clouds-file")
                .arg(&clouds)
                .args(["--os-cloud", user, "--url", &url])
                .args(&args)
                .env_remove("OS_CLOUD")
                .output()
                .await
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).to_string(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        }
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let a = cloud.project("a");
    let vm_port = a["vms"][1]["port_id"].as_str().unwrap().to_string();

    let (ok, out, err) = pat(
        "a-member",
        args(&[
            "--json",
            "create",
            "--port",
            &vm_port,
            "--server-port",
            "8080",
            "--description",
            "web",
        ]),
    )
    .await;
    assert!(ok, "{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["internal_ip_address"], a["vms"][1]["ip"]);
    assert_eq!(created["router_id"], a["router_id"]);

    // The table, as the original showed it.
    let (ok, out, err) = pat("a-member", args(&["list"])).await;
    assert!(ok, "{err}");
    assert!(out.contains("Router Port") && out.contains(&id), "{out}");
    assert!(out.contains("| 8080 ") && out.contains("| web "), "{out}");

    let (ok, out, err) = pat(
        "a-member",
        args(&["--json", "modify", &id, "--router-port", "4099"]),
    )
    .await;
    assert!(ok, "{err}");
    let changed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(changed["external_port"], 4099);

    // A reader may look but not create; project B does not see it at all.
    let (ok, out, _) = pat("a-reader", args(&["--json", "show", &id])).await;
    assert!(ok);
    assert!(out.contains(&id));
    let (ok, _, err) = pat(
        "a-reader",
        args(&["create", "--port", &vm_port, "--server-port", "8081"]),
    )
    .await;
    assert!(!ok && err.contains("403 forbidden"), "{err}");
    let (ok, _, err) = pat("b-member", args(&["show", &id])).await;
    assert!(!ok && err.contains("404 not_found"), "{err}");
    let (ok, out, _) = pat("b-member", args(&["--json", "list"])).await;
    assert!(ok);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!([]));

    let (ok, out, err) = pat("a-member", args(&["remove", &id])).await;
    assert!(ok, "{err}");
    assert_eq!(
        out, "",
        "deleting prints nothing, as openstack's delete commands"
    );
    let (ok, out, _) = pat("a-member", args(&["--json", "list"])).await;
    assert!(ok);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!([]));
    server.abort();
}

/// Without `--url` or `PRAAS_URL`, `praas pat` finds PRaaS in Keystone's catalog under the
/// service type `port-forwarding` (which the dev cloud registers, as the install documents).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_cli_finds_praas_through_the_catalog() {
    let test = "the_proxy_cli_finds_praas_through_the_catalog";
    let _shared = KEYSTONE.read().await;
    let Some(cloud) = Cloud::find(test) else {
        return;
    };
    let Some(endpoint) = cloud.resources["praas"].as_str() else {
        panic!("{test}: the dev cloud registers no PRaaS endpoint: run scripts/dev-cloud up again");
    };
    let address = endpoint.trim_start_matches("http://").to_string();
    let listener = tokio::net::TcpListener::bind(&address).await.unwrap();
    let app = cloud.app().await;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_praas"))
        .arg("pat")
        .arg("--clouds-file")
        .arg(cloud.dir.join("clouds.yaml"))
        .args(["--os-cloud", "b-reader", "--json", "list"])
        .env_remove("OS_CLOUD")
        .env_remove("PRAAS_URL")
        .output()
        .await
        .unwrap();
    server.abort();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(
        serde_json::from_str::<Value>(&stdout).unwrap(),
        json!([]),
        "project B has no mapping"
    );
}

/// PRaaS served on loopback for the CLI, on a fresh store; stopped when dropped.
struct Served {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    async fn start(cloud: &Cloud) -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = cloud.app().await;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Served { url, task }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What one run of `praas` gave.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}{}", self.stdout, self.stderr))
    }

    fn ok(self) -> Run {
        assert_eq!(self.code, Some(0), "{}{}", self.stdout, self.stderr);
        self
    }
}

/// `praas pat|router ARGS` with only `env` from the environment (no terminal on stdin).
async fn praas(env: &[(&str, String)], args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_praas"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().await.unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The environment of `user` of clouds.yaml, with PRaaS at `url`.
fn as_cloud(cloud: &Cloud, user: &str, url: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "OS_CLIENT_CONFIG_FILE",
            cloud.dir.join("clouds.yaml").display().to_string(),
        ),
        ("OS_CLOUD", user.to_string()),
        ("PRAAS_URL", url.to_string()),
    ]
}

/// `user`'s openrc, as Horizon writes it (the password left out when `password` is false).
fn openrc(cloud: &Cloud, user: &str, password: bool) -> Vec<(&'static str, String)> {
    let text = std::fs::read_to_string(cloud.dir.join("clouds.yaml")).unwrap();
    let clouds: Value = yaml_serde::from_str(&text).unwrap();
    let auth = &clouds["clouds"][user]["auth"];
    let s = |k: &str| auth[k].as_str().unwrap().to_string();
    let mut env = vec![
        ("OS_AUTH_URL", s("auth_url")),
        ("OS_USERNAME", s("username")),
        ("OS_PROJECT_NAME", s("project_name")),
        ("OS_USER_DOMAIN_NAME", "Default".to_string()),
        ("OS_PROJECT_DOMAIN_NAME", "Default".to_string()),
        ("OS_REGION_NAME", "RegionOne".to_string()),
    ];
    if password {
        env.push(("OS_PASSWORD", s("password")));
    }
    env
}

/// Project A's server `name` of resources.json.
fn server<'a>(cloud: &'a Cloud, name: &str) -> &'a Value {
    cloud.project("a")["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no server {name} in resources.json"))
}

/// A tenant who knows the `openstack` client: servers, networks and routers by name, the
/// router chosen for a server, the NIC a router serves chosen, ambiguity named, another
/// project's server unknown, every output format, and the routers' free ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_maps_servers_by_name_as_with_the_openstack_client() {
    let test = "a_tenant_maps_servers_by_name_as_with_the_openstack_client";
    let _shared = KEYSTONE.read().await;
    let Some(cloud) = Cloud::find(test) else {
        return;
    };
    if cloud.nova(test).is_none() {
        return;
    }
    let praas_ = Served::start(&cloud).await;
    let member = as_cloud(&cloud, "a-member", &praas_.url);
    let a = cloud.project("a");

    // By the server's name: its only NIC, and the router with a gateway on its network.
    let one = praas(
        &member,
        &[
            "pat",
            "create",
            "--server",
            "server-a1",
            "--internal-protocol-port",
            "22",
            "-f",
            "json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(one["server"], "server-a1", "{one}");
    assert_eq!(one["router_id"], a["router_id"]);
    assert_eq!(
        one["internal_ip_address"],
        server(&cloud, "server-a1")["ports"][0]["ip"]
    );
    assert_eq!(
        one["internal_port_id"],
        server(&cloud, "server-a1")["ports"][0]["port_id"]
    );

    // Two NICs, each behind a router with a gateway: without a terminal, the choices.
    let two = praas(
        &member,
        &[
            "pat",
            "create",
            "--server",
            "server-a2",
            "--internal-protocol-port",
            "22",
        ],
    )
    .await;
    assert_eq!(two.code, Some(2), "{}", two.stderr);
    for expected in [
        "server-a2 has 2 NICs",
        "--network",
        "net-a-second: 10.12.",
        "net-a: 10.10.",
    ] {
        assert!(
            two.stderr.contains(expected),
            "{expected:?}: {}",
            two.stderr
        );
    }
    assert_eq!(two.stdout, "");
    // The network named: that NIC, and its own router.
    let second = praas(
        &member,
        &[
            "pat",
            "create",
            "--server",
            "server-a2",
            "--network",
            "net-a-second",
            "--internal-protocol-port",
            "22",
            "-f",
            "json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(
        second["router_id"], a["second_network"]["router_id"],
        "{second}"
    );
    assert_eq!(
        second["external_ip_address"],
        a["second_network"]["router_gateway_ip"]
    );
    // One routed NIC and one on a network no router serves: the routed one, no question.
    let routed = praas(
        &member,
        &[
            "pat",
            "create",
            "--server",
            "server-a3",
            "--internal-protocol-port",
            "80",
            "-f",
            "value",
            "-c",
            "internal_ip_address",
        ],
    )
    .await
    .ok();
    assert_eq!(
        routed.stdout.trim(),
        server(&cloud, "server-a3")["ports"][0]["ip"]
            .as_str()
            .unwrap()
    );
    // One name, two servers; and project B's server is not A's to use.
    let twins = praas(
        &member,
        &[
            "pat",
            "create",
            "--server",
            "server-twin",
            "--internal-protocol-port",
            "22",
        ],
    )
    .await;
    assert_eq!(twins.code, Some(2));
    assert!(
        twins.stderr.contains("2 servers are named \"server-twin\""),
        "{}",
        twins.stderr
    );
    let theirs = praas(
        &member,
        &[
            "pat",
            "create",
            "--server",
            "server-b1",
            "--internal-protocol-port",
            "22",
        ],
    )
    .await;
    assert_eq!(theirs.code, Some(1), "{}", theirs.stderr);
    assert!(
        theirs.stderr.contains("no server \"server-b1\""),
        "{}",
        theirs.stderr
    );

    // Every format of the listing; the server's name in it.
    let listed = praas(
        &member,
        &["pat", "list", "-f", "json", "--sort-column", "Server Port"],
    )
    .await
    .ok()
    .json();
    let rows = listed.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{listed}");
    assert_eq!(rows[0]["Server Port"], 22);
    assert!(rows.iter().any(|r| r["Server"] == "server-a1"), "{listed}");
    let yaml = praas(&member, &["pat", "list", "-f", "yaml"]).await.ok();
    let parsed: Value = yaml_serde::from_str(&yaml.stdout).unwrap();
    assert_eq!(parsed.as_array().map(Vec::len), Some(3), "{}", yaml.stdout);
    let value = praas(
        &member,
        &[
            "pat",
            "list",
            "-f",
            "value",
            "-c",
            "Server",
            "-c",
            "Server Port",
            "--sort-column",
            "Server Port",
        ],
    )
    .await
    .ok();
    let mut lines: Vec<&str> = value.stdout.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        ["server-a1 22", "server-a2 22", "server-a3 80"],
        "{}",
        value.stdout
    );
    let csv = praas(&member, &["pat", "list", "-f", "csv", "-c", "ID"])
        .await
        .ok();
    assert!(csv.stdout.starts_with("\"ID\"\n"), "{}", csv.stdout);
    let table = praas(&member, &["pat", "list", "--server", "server-a1"])
        .await
        .ok();
    assert!(
        table.stdout.contains("| server-a1 ") && table.stdout.lines().count() == 5,
        "{}",
        table.stdout
    );
    let shown = praas(&member, &["pat", "show", one["id"].as_str().unwrap()])
        .await
        .ok();
    assert!(
        shown.stdout.starts_with("+---") && shown.stdout.contains("| Field "),
        "{}",
        shown.stdout
    );

    // The project's routers, and what router-a has left.
    let routers = praas(&member, &["router", "list", "-f", "json"])
        .await
        .ok()
        .json();
    let router_a = routers
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["Name"] == "router-a")
        .unwrap();
    assert_eq!(router_a["Gateway"], a["router_gateway_ip"]);
    assert_eq!(router_a["TCP Used"], 2, "{routers}");
    let free = praas(
        &member,
        &[
            "pat",
            "create",
            "--free-ports",
            "--router",
            "router-a",
            "-f",
            "json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(free["ports_free"], 99, "{free}");
    assert!(
        free["free_ports"].as_array().is_some_and(|r| !r.is_empty()),
        "{free}"
    );

    // Another project's member, and A's reader.
    let b = as_cloud(&cloud, "b-member", &praas_.url);
    let hidden = praas(&b, &["pat", "show", one["id"].as_str().unwrap()]).await;
    assert_eq!(hidden.code, Some(1));
    assert!(
        hidden.stderr.contains("not found (404 not_found)"),
        "{}",
        hidden.stderr
    );
    let reader = as_cloud(&cloud, "a-reader", &praas_.url);
    let refused = praas(
        &reader,
        &[
            "pat",
            "create",
            "--server",
            "server-a1",
            "--internal-protocol-port",
            "23",
        ],
    )
    .await;
    assert_eq!(refused.code, Some(1));
    assert!(
        refused.stderr.contains("403 forbidden"),
        "{}",
        refused.stderr
    );

    // Delete all three at once.
    let ids: Vec<String> = rows
        .iter()
        .map(|r| r["ID"].as_str().unwrap().to_string())
        .collect();
    let mut args = vec!["pat", "delete"];
    args.extend(ids.iter().map(String::as_str));
    praas(&member, &args).await.ok();
    let left = praas(&member, &["pat", "list", "-f", "json"])
        .await
        .ok()
        .json();
    assert_eq!(left, json!([]));
}

/// Logging in as the openstack client does: an openrc, a token with Keystone's URL for the
/// names, a token and PRaaS's URL alone, and an openrc without a password and no terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openrc_or_a_token_logs_in_as_with_the_openstack_client() {
    let test = "an_openrc_or_a_token_logs_in_as_with_the_openstack_client";
    let _shared = KEYSTONE.read().await;
    let Some(cloud) = Cloud::find(test) else {
        return;
    };
    let praas_ = Served::start(&cloud).await;
    let mut rc = openrc(&cloud, "a-member", true);
    rc.push(("PRAAS_URL", praas_.url.clone()));
    let vm_port = cloud.project("a")["vms"][0]["port_id"]
        .as_str()
        .unwrap()
        .to_string();
    let created = praas(
        &rc,
        &[
            "pat",
            "create",
            "--port",
            &vm_port,
            "--internal-protocol-port",
            "22",
            "--router",
            "router-a",
            "-f",
            "json",
        ],
    )
    .await
    .ok()
    .json();
    let id = created["id"].as_str().unwrap().to_string();

    // A token, with Keystone's URL: names still resolve.
    let token = cloud.token("a-member").await;
    let auth_url = rc
        .iter()
        .find(|(k, _)| *k == "OS_AUTH_URL")
        .unwrap()
        .1
        .clone();
    let with_keystone = vec![
        ("OS_TOKEN", token.clone()),
        ("OS_AUTH_URL", auth_url),
        ("PRAAS_URL", praas_.url.clone()),
    ];
    let listed = praas(
        &with_keystone,
        &[
            "pat", "list", "--router", "router-a", "-f", "value", "-c", "ID",
        ],
    )
    .await
    .ok();
    assert_eq!(listed.stdout.trim(), id);
    // A token and PRaaS's URL alone: ids work, and PRaaS's own router names.
    let bare = vec![("OS_TOKEN", token)];
    let shown = praas(
        &bare,
        &[
            "pat",
            "--os-url",
            &praas_.url,
            "show",
            &id,
            "-f",
            "value",
            "-c",
            "id",
        ],
    )
    .await
    .ok();
    assert_eq!(shown.stdout.trim(), id);
    let routers = praas(
        &bare,
        &[
            "router",
            "--os-url",
            &praas_.url,
            "show",
            "router-a",
            "-f",
            "value",
            "-c",
            "name",
        ],
    )
    .await
    .ok();
    assert_eq!(routers.stdout.trim(), "router-a");
    let by_server = praas(
        &bare,
        &[
            "pat",
            "--os-url",
            &praas_.url,
            "list",
            "--server",
            "server-a1",
        ],
    )
    .await;
    assert_eq!(by_server.code, Some(2), "{}", by_server.stderr);
    assert!(
        by_server.stderr.contains("needs Keystone"),
        "{}",
        by_server.stderr
    );

    // No password and no terminal to ask on: what to set.
    let mut no_password = openrc(&cloud, "a-member", false);
    no_password.push(("PRAAS_URL", praas_.url.clone()));
    let asked = praas(&no_password, &["pat", "list"]).await;
    assert_eq!(asked.code, Some(2), "{}", asked.stderr);
    assert!(
        asked.stderr.contains("no password for a-member in project")
            && asked.stderr.contains("OS_PASSWORD"),
        "{}",
        asked.stderr
    );

    praas(&rc, &["pat", "delete", &id]).await.ok();
}

/// The original's menus through a pseudo-terminal: create picks the server and (when there
/// are several) its NIC, shows the router it chose, asks the ports, confirms and prints the
/// result table; set picks a mapping and asks its changes; delete picks a mapping and asks
/// before deleting; and a password is asked for when the openrc has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_s_menus_work_through_a_terminal() {
    let test = "the_original_s_menus_work_through_a_terminal";
    let _shared = KEYSTONE.read().await;
    let Some(cloud) = Cloud::find(test) else {
        return;
    };
    if cloud.nova(test).is_none() {
        return;
    }
    let praas_ = Served::start(&cloud).await;
    let mut env = openrc(&cloud, "a-member", false);
    env.push(("PRAAS_URL", praas_.url.clone()));
    let password = openrc(&cloud, "a-member", true)
        .into_iter()
        .find(|(k, _)| *k == "OS_PASSWORD")
        .unwrap()
        .1;
    let terminal = move |args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_praas"));
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        for (k, v) in &env {
            command.env(k, v);
        }
        rexpect::session::spawn_command(command, Some(30_000)).unwrap()
    };
    let gateway = cloud.project("a")["router_gateway_ip"]
        .as_str()
        .unwrap()
        .to_string();
    let expected_ip = server(&cloud, "server-a1")["ports"][0]["ip"]
        .as_str()
        .unwrap()
        .to_string();
    let (password_, gateway_) = (password.clone(), gateway.clone());
    let session = tokio::task::spawn_blocking(move || {
        let mut p = terminal(&["pat", "create", "-i"]);
        p.exp_string("Password for a-member in project").unwrap();
        p.send_line(&password_).unwrap();
        p.exp_string("Your servers:").unwrap();
        let menu = p.exp_string("Server [1-").unwrap();
        assert!(
            menu.contains("server-a1") && menu.contains("server-twin"),
            "{menu}"
        );
        p.exp_string("]: ").unwrap();
        p.send_line("server-a1").unwrap();
        p.exp_string(&format!("Router: router-a (gateway {gateway_})"))
            .unwrap();
        p.exp_string("server-a1 has no mapping on router-a yet.")
            .unwrap();
        p.exp_string("Port on the server (N, or a range N:M): ")
            .unwrap();
        p.send_line("8022").unwrap();
        p.exp_string("Protocol (tcp or udp) [tcp]: ").unwrap();
        p.send_line("").unwrap();
        p.exp_string("Free ports on router-a: 4000:4100").unwrap();
        p.exp_string("[any]: ").unwrap();
        p.send_line("4044").unwrap();
        let question = p.exp_string("[y/N]: ").unwrap();
        assert!(
            question.contains(&format!(
                "Forward {gateway_}:4044 (tcp) to server-a1 {expected_ip}:8022?"
            )),
            "{question}"
        );
        p.send_line("y").unwrap();
        let result = p.exp_eof().unwrap();
        assert!(
            result.contains("| server-a1 | 8022        | 4044        |"),
            "{result}"
        );

        // Two routed NICs: a menu of them; then answered "no": nothing is created.
        let mut p = terminal(&[
            "pat",
            "create",
            "--server",
            "server-a2",
            "--internal-protocol-port",
            "80",
        ]);
        p.exp_string("Password for").unwrap();
        p.send_line(&password_).unwrap();
        let nics = p.exp_string("NIC [1-2]: ").unwrap();
        assert!(
            nics.contains("net-a-second") && nics.contains("net-a "),
            "{nics}"
        );
        p.send_line("1").unwrap();
        p.exp_string("Router: ").unwrap();
        p.exp_string("Protocol (tcp or udp) [tcp]: ").unwrap();
        p.send_line("").unwrap();
        p.exp_string("[any]: ").unwrap();
        p.send_line("").unwrap();
        p.exp_string("[y/N]: ").unwrap();
        p.send_line("n").unwrap();
        let end = p.exp_eof().unwrap();
        assert!(end.contains("cancelled: nothing was created"), "{end}");

        // Set without an id: pick it, answer the changes (empty keeps), confirm.
        let mut p = terminal(&[
            "pat",
            "set",
            "-f",
            "value",
            "-c",
            "external_port",
            "-c",
            "description",
        ]);
        p.exp_string("Password for").unwrap();
        p.send_line(&password_).unwrap();
        p.exp_string("Mapping [1-1]: ").unwrap();
        p.send_line("1").unwrap();
        p.exp_string("Port on the server [8022]: ").unwrap();
        p.send_line("").unwrap();
        p.exp_string("Port on the router [4044]: ").unwrap();
        p.send_line("4045").unwrap();
        p.exp_string("Description []: ").unwrap();
        p.send_line("web").unwrap();
        p.exp_string("[y/N]: ").unwrap();
        p.send_line("yes").unwrap();
        let changed = p.exp_eof().unwrap();
        assert!(changed.contains("4045\r\nweb"), "{changed:?}");

        // Delete without an id: pick it, confirm.
        let mut p = terminal(&["pat", "delete"]);
        p.exp_string("Password for").unwrap();
        p.send_line(&password_).unwrap();
        let menu = p.exp_string("Mapping to delete [1-1]: ").unwrap();
        assert!(
            menu.contains("server-a1") && menu.contains("4045"),
            "{menu}"
        );
        p.send_line("1").unwrap();
        p.exp_string("Its connections are cut. [y/N]: ").unwrap();
        p.send_line("y").unwrap();
        p.exp_eof().unwrap();
    })
    .await;
    session.unwrap();
    let mut rc = openrc(&cloud, "a-member", true);
    rc.push(("PRAAS_URL", praas_.url.clone()));
    let left = praas(&rc, &["pat", "list", "-f", "json"]).await.ok().json();
    assert_eq!(
        left,
        json!([]),
        "the mapping made through the menus was deleted through them"
    );
}
