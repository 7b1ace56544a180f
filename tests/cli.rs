//! The Proxy CLI as a user meets it before any cloud answers: help with examples on every
//! command, shell completions and the manual page from the same definitions, what it says
//! (and its exit code) with nothing configured, a token without a place to send it, or a
//! PRaaS that cannot be reached. Needs nothing but the binary.

use std::process::{Command, Output};

fn praas(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_praas"))
        .args(args)
        // Nothing of the caller's environment: no cloud, no openrc, no token.
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn every_command_s_help_has_examples() {
    for command in [
        vec!["pat"],
        vec!["pat", "list"],
        vec!["pat", "show"],
        vec!["pat", "create"],
        vec!["pat", "set"],
        vec!["pat", "modify"],
        vec!["pat", "delete"],
        vec!["pat", "remove"],
        vec!["router"],
        vec!["router", "list"],
        vec!["router", "show"],
    ] {
        let mut args = command.clone();
        args.push("--help");
        let out = praas(&args);
        assert!(out.status.success(), "{command:?}: {}", stderr(&out));
        let help = stdout(&out);
        assert!(help.contains("Examples:\n  praas "), "{command:?}:\n{help}");
    }
    // The authentication options are shown once, for `praas pat`, not for each command.
    let top = stdout(&praas(&["pat", "--help"]));
    assert!(
        top.contains("--os-cloud") && top.contains("Exit codes:"),
        "{top}"
    );
    let list = stdout(&praas(&["pat", "list", "--help"]));
    assert!(!list.contains("--os-cloud"), "{list}");
    assert!(
        list.contains("--format") && list.contains("--sort-column"),
        "{list}"
    );
}

#[test]
fn completions_and_the_manual_come_from_the_same_definitions() {
    for shell in ["bash", "zsh", "fish"] {
        let out = praas(&["completion", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        assert!(
            script.contains("internal-protocol-port") && script.contains("free-ports"),
            "{shell}: {script}"
        );
    }
    let man = stdout(&praas(&["man"]));
    assert!(man.starts_with(".ie") || man.contains(".TH praas"), "{man}");
    assert!(man.contains("pat"), "{man}");
}

#[test]
fn with_nothing_configured_it_says_what_to_set_and_exits_2() {
    let out = praas(&["pat", "list"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("OS_CLOUD") && err.contains("openrc") && err.contains("--os-token"),
        "{err}"
    );
    assert_eq!(stdout(&out), "");
}

#[test]
fn a_token_needs_somewhere_to_go_and_an_unreachable_praas_exits_3() {
    let out = praas(&["pat", "--os-token", "gAAAA-test", "list"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--os-url"), "{}", stderr(&out));
    let port = praas::testbed::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let out = praas(&["pat", "--os-token", "gAAAA-test", "--os-url", &url, "list"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot be reached"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn usage_errors_are_in_the_cli_s_own_terms_and_exit_2() {
    let port = praas::testbed::free_port();
    let url = format!("http://127.0.0.1:{port}");
    // Without a terminal, a create missing its server says which options could give it.
    let out = praas(&[
        "pat",
        "--os-token",
        "t",
        "--os-url",
        &url,
        "create",
        "--internal-protocol-port",
        "22",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("--server") && err.contains("--port") && err.contains("--internal-ip-address"),
        "{err}"
    );
    // A port that is not one.
    let out = praas(&[
        "pat",
        "--os-token",
        "t",
        "--os-url",
        &url,
        "create",
        "--internal-ip-address",
        "10.0.0.5",
        "--internal-protocol-port",
        "ssh",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--internal-protocol-port \"ssh\" is not a port"),
        "{}",
        stderr(&out)
    );
    // clap's own usage errors exit 2 too.
    let out = praas(&["pat", "list", "--no-such-option"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_proxy_s_html_page_is_not_printed() {
    // Something in front of PRaaS answers with an HTML error page.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut stream, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf);
        let body = "<html><body><h1>502 Bad Gateway</h1></body></html>";
        let _ = write!(
            stream,
            "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    });
    let out = praas(&["pat", "--os-token", "t", "--os-url", &url, "list"]);
    server.join().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(!err.contains("<html") && err.contains("502"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line, said once: {err}");
}
