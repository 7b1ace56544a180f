//! One JSON-RPC connection to an OVSDB server (RFC 7047): requests matched to replies by id,
//! the server's `echo` answered, and monitor notifications handed to a callback.
//!
//! The connection is blocking: a reader thread parses the stream of concatenated JSON objects
//! and wakes the caller waiting for each reply. Callers may share one connection across
//! threads.

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};
use tracing::debug;

use super::transport::{self, TlsFiles};
use super::{OvsdbError, Remote};

/// Called with each `update` notification's parameters (`[monitor id, table updates]`), on
/// the reader thread, in the order the server sent them.
pub type UpdateHandler = Box<dyn FnMut(Value) + Send>;

type Reply = Result<Value, OvsdbError>;

struct Shared {
    remote: String,
    /// Callers waiting for a reply, by request id.
    pending: Mutex<HashMap<u64, mpsc::Sender<Reply>>>,
    /// Why the connection ended, once it has.
    closed: Mutex<Option<String>>,
}

impl Shared {
    fn fail_all(&self, reason: &str) {
        *self.closed.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_string());
        for (_, waiter) in self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            let _ = waiter.send(Err(OvsdbError::Disconnected {
                remote: self.remote.clone(),
                reason: reason.to_string(),
            }));
        }
    }
}

/// A connection to one OVSDB server.
pub struct Connection {
    shared: Arc<Shared>,
    writer: Arc<Mutex<Box<dyn Write + Send>>>,
    shutdown: Box<dyn Fn() + Send + Sync>,
    reader: Option<JoinHandle<()>>,
    next_id: AtomicU64,
    timeout: Duration,
}

impl Connection {
    /// Connects to `remote`. `on_update` receives monitor notifications.
    pub fn open(
        remote: &Remote,
        tls: &TlsFiles,
        timeout: Duration,
        on_update: UpdateHandler,
    ) -> Result<Connection, OvsdbError> {
        let halves = transport::open(remote, tls)?;
        let shared = Arc::new(Shared {
            remote: remote.to_string(),
            pending: Mutex::new(HashMap::new()),
            closed: Mutex::new(None),
        });
        let writer: Arc<Mutex<Box<dyn Write + Send>>> = Arc::new(Mutex::new(halves.writer));
        let reader = {
            let shared = shared.clone();
            let writer = writer.clone();
            let stream = halves.reader;
            std::thread::Builder::new()
                .name("ovsdb-reader".into())
                .spawn(move || read_loop(stream, &shared, &writer, on_update))
                .map_err(|source| OvsdbError::Connect {
                    remote: remote.to_string(),
                    source,
                })?
        };
        Ok(Connection {
            shared,
            writer,
            shutdown: halves.shutdown,
            reader: Some(reader),
            next_id: AtomicU64::new(1),
            timeout,
        })
    }

    pub fn remote(&self) -> &str {
        &self.shared.remote
    }

    /// Why the connection ended, or `None` while it is open.
    pub fn closed(&self) -> Option<String> {
        self.shared
            .closed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sends `method` with `params` and waits for the reply's `result`.
    pub fn call(&self, method: &'static str, params: Value) -> Result<Value, OvsdbError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        if let Some(reason) = self.closed() {
            self.forget(id);
            return Err(OvsdbError::Disconnected {
                remote: self.shared.remote.clone(),
                reason,
            });
        }
        let message = json!({"method": method, "params": params, "id": id});
        if let Err(source) = send(&self.writer, &message) {
            self.forget(id);
            return Err(OvsdbError::Send {
                remote: self.shared.remote.clone(),
                source,
            });
        }
        match rx.recv_timeout(self.timeout) {
            Ok(reply) => reply.map_err(|e| match e {
                OvsdbError::Rpc { error, details, .. } => OvsdbError::Rpc {
                    remote: self.shared.remote.clone(),
                    method,
                    error,
                    details,
                },
                other => other,
            }),
            Err(_) => {
                self.forget(id);
                Err(OvsdbError::Timeout {
                    remote: self.shared.remote.clone(),
                    method,
                    timeout: self.timeout,
                })
            }
        }
    }

    fn forget(&self, id: u64) {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// `echo`: the server is there and answering.
    pub fn echo(&self) -> Result<(), OvsdbError> {
        self.call("echo", json!(["praas"])).map(|_| ())
    }

    /// `transact` on `database`: every operation or none. A failed operation (or a failed
    /// commit) is [`OvsdbError::Transaction`] naming it; otherwise one result per operation.
    pub fn transact(
        &self,
        database: &str,
        operations: Vec<Value>,
    ) -> Result<Vec<Value>, OvsdbError> {
        let count = operations.len();
        let mut params = Vec::with_capacity(count + 1);
        params.push(Value::String(database.to_string()));
        let ops_for_error: Vec<String> = operations
            .iter()
            .map(|op| {
                let kind = op.get("op").and_then(Value::as_str).unwrap_or("?");
                let table = op.get("table").and_then(Value::as_str).unwrap_or("");
                format!("{kind} {table}").trim().to_string()
            })
            .collect();
        params.extend(operations);
        let result = self.call("transact", Value::Array(params))?;
        let results = match result {
            Value::Array(results) => results,
            other => {
                return Err(OvsdbError::Protocol {
                    remote: self.shared.remote.clone(),
                    detail: format!("transact answered {other}, not an array"),
                })
            }
        };
        for (index, result) in results.iter().enumerate() {
            if let Some(error) = result.get("error").and_then(Value::as_str) {
                let details = result
                    .get("details")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                return Err(OvsdbError::Transaction {
                    remote: self.shared.remote.clone(),
                    operation: ops_for_error
                        .get(index)
                        .cloned()
                        .unwrap_or_else(|| "commit".to_string()),
                    error: error.to_string(),
                    details,
                });
            }
        }
        if results.len() < count {
            return Err(OvsdbError::Protocol {
                remote: self.shared.remote.clone(),
                detail: format!("{} results for {count} operations", results.len()),
            });
        }
        Ok(results)
    }

    /// Starts monitor `id` on `database` with `requests` (RFC 7047 `monitor`): returns the
    /// initial contents; later changes reach the connection's update handler.
    pub fn monitor(&self, database: &str, id: &str, requests: Value) -> Result<Value, OvsdbError> {
        self.call("monitor", json!([database, id, requests]))
    }

    /// The schema of `database`.
    pub fn schema(&self, database: &str) -> Result<Value, OvsdbError> {
        self.call("get_schema", json!([database]))
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        (self.shutdown)();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

fn send(writer: &Mutex<Box<dyn Write + Send>>, message: &Value) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(message)?;
    let mut writer = writer.lock().unwrap_or_else(|e| e.into_inner());
    writer.write_all(&bytes)?;
    writer.flush()
}

fn read_loop(
    stream: Box<dyn std::io::Read + Send>,
    shared: &Shared,
    writer: &Mutex<Box<dyn Write + Send>>,
    mut on_update: UpdateHandler,
) {
    let messages =
        serde_json::Deserializer::from_reader(BufReader::new(stream)).into_iter::<Value>();
    for message in messages {
        let message = match message {
            Ok(message) => message,
            Err(e) => {
                let reason = if e.is_eof() {
                    "the server closed the connection".to_string()
                } else {
                    format!("unreadable message: {e}")
                };
                debug!(remote = %shared.remote, %reason, "OVSDB connection ended");
                shared.fail_all(&reason);
                return;
            }
        };
        match message.get("method").and_then(Value::as_str) {
            Some("echo") => {
                // The server's inactivity probe: answer with the same parameters.
                let reply = json!({
                    "id": message.get("id").cloned().unwrap_or(Value::Null),
                    "result": message.get("params").cloned().unwrap_or(json!([])),
                    "error": null,
                });
                if let Err(e) = send(writer, &reply) {
                    shared.fail_all(&format!("cannot answer the server's echo: {e}"));
                    return;
                }
            }
            Some("update") | Some("update2") => {
                on_update(message.get("params").cloned().unwrap_or(Value::Null));
            }
            Some(other) => {
                debug!(remote = %shared.remote, method = other, "ignored an OVSDB notification");
            }
            None => {
                let Some(id) = message.get("id").and_then(Value::as_u64) else {
                    continue;
                };
                let waiter = shared
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                let Some(waiter) = waiter else {
                    continue;
                };
                let reply = match message.get("error") {
                    Some(error) if !error.is_null() => Err(OvsdbError::Rpc {
                        remote: shared.remote.clone(),
                        method: "",
                        error: error
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| error.to_string()),
                        details: message
                            .get("details")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                    }),
                    _ => Ok(message.get("result").cloned().unwrap_or(Value::Null)),
                };
                let _ = waiter.send(reply);
            }
        }
    }
    shared.fail_all("the server closed the connection");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, Read};
    use std::os::unix::net::UnixListener;

    /// A server that sends `script` (raw text, possibly split across writes) and returns what
    /// the client sent.
    fn with_server(
        serve: impl FnOnce(std::os::unix::net::UnixStream) + Send + 'static,
    ) -> (Remote, std::thread::JoinHandle<()>, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("praas-ovsdb-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("db.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            serve(stream);
        });
        (Remote::Unix { path }, handle, dir)
    }

    fn read_message(reader: &mut impl BufRead) -> Value {
        let mut de = serde_json::Deserializer::from_reader(reader).into_iter::<Value>();
        de.next().unwrap().unwrap()
    }

    #[test]
    fn the_servers_echo_is_answered_and_replies_are_matched_by_id_across_split_writes() {
        let (remote, server, dir) = with_server(|stream| {
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            // The server probes first; the client must answer.
            writer
                .write_all(br#"{"id":"echo","method":"echo","params":["probe"]}"#)
                .unwrap();
            // The answer and the client's own request may come in either order.
            let (first, second) = (read_message(&mut reader), read_message(&mut reader));
            let (answer, request) = if first["id"] == "echo" {
                (first, second)
            } else {
                (second, first)
            };
            assert_eq!(answer["id"], "echo");
            assert_eq!(answer["result"], json!(["probe"]));
            assert_eq!(request["method"], "transact");
            let id = request["id"].clone();
            // A notification, then the reply in two pieces.
            writer
                .write_all(br#"{"id":null,"method":"update","params":["m",{"T":{}}]}"#)
                .unwrap();
            let reply = json!({"id": id, "result": [{"uuid": ["uuid", "0e2f"]}], "error": null})
                .to_string();
            let (a, b) = reply.split_at(reply.len() / 2);
            writer.write_all(a.as_bytes()).unwrap();
            writer.flush().unwrap();
            std::thread::sleep(Duration::from_millis(20));
            writer.write_all(b.as_bytes()).unwrap();
            // Then the server goes away.
            let mut rest = Vec::new();
            let _ = reader.read_to_end(&mut rest);
        });
        let (tx, rx) = mpsc::channel();
        let conn = Connection::open(
            &remote,
            &TlsFiles::default(),
            Duration::from_secs(5),
            Box::new(move |update| {
                let _ = tx.send(update);
            }),
        )
        .unwrap();
        let results = conn
            .transact(
                "OVN_Northbound",
                vec![json!({"op": "insert", "table": "Load_Balancer", "row": {}})],
            )
            .unwrap();
        assert_eq!(results[0]["uuid"], json!(["uuid", "0e2f"]));
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(1)).unwrap(),
            json!(["m", {"T": {}}])
        );
        drop(conn);
        server.join().unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failed_operation_is_named_and_a_lost_server_fails_the_waiting_call() {
        let (remote, server, dir) = with_server(|stream| {
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            let request = read_message(&mut reader);
            let reply = json!({"id": request["id"], "error": null, "result": [
                {"uuid": ["uuid", "a"]},
                {"error": "constraint violation", "details": "name must be unique"},
            ]});
            writer.write_all(reply.to_string().as_bytes()).unwrap();
            // The next request is never answered: the server closes.
            let _ = read_message(&mut reader);
        });
        let conn = Connection::open(
            &remote,
            &TlsFiles::default(),
            Duration::from_secs(5),
            Box::new(|_| {}),
        )
        .unwrap();
        let err = conn
            .transact(
                "OVN_Northbound",
                vec![
                    json!({"op": "insert", "table": "Load_Balancer", "row": {}}),
                    json!({"op": "mutate", "table": "Logical_Router", "where": [], "mutations": []}),
                ],
            )
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("mutate Logical_Router"), "{text}");
        assert!(text.contains("constraint violation"), "{text}");
        let err = conn.echo().unwrap_err();
        assert!(matches!(err, OvsdbError::Disconnected { .. }), "{err}");
        assert!(conn.closed().is_some());
        assert!(matches!(
            conn.echo().unwrap_err(),
            OvsdbError::Disconnected { .. }
        ));
        drop(conn);
        server.join().unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
