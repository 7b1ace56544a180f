//! Running a program with input on stdin, for the iptables driver and the test fixture.

use std::io::{self, Write};
use std::process::{Command, Stdio};

/// Why running a program failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// It could not be started (not installed, not executable).
    #[error("could not start it")]
    Spawn(#[source] io::Error),
    /// It ran and failed; its stderr, trimmed (or its exit status when stderr is empty).
    #[error("{0}")]
    Failed(String),
}

/// Runs `program` with `args`, feeding it `input`, and returns its stdout.
pub fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<String, RunError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(RunError::Spawn)?;
    let stdin = child.stdin.take();
    // Write from a second thread so that a child filling its output pipes cannot deadlock us.
    // A write error means the child exited early; its exit status says why.
    let output = std::thread::scope(|scope| {
        if let (Some(mut stdin), Some(input)) = (stdin, input) {
            scope.spawn(move || {
                let _ = stdin.write_all(input.as_bytes());
            });
        }
        child.wait_with_output()
    })
    .map_err(|e| RunError::Failed(format!("waiting for {program}: {e}")))?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    Err(RunError::Failed(if stderr.is_empty() {
        format!("{program} failed: {}", output.status)
    } else {
        stderr
    }))
}
