//! What every process test needs: the `clover` binary run to completion or kept running, a
//! token minted by it, the loopback addresses of the example sites, an HTTP client placed at
//! one of them, and a boundary's subjects and records written through the API.

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_clover");
/// How long a process gets to start, answer or stop: generous, for slow machines.
pub const PATIENCE: Duration = Duration::from_secs(30);
/// Where the keyring's passphrase comes from when no file holds it.
pub const PASSPHRASE_ENV: &str = "CLOVER_PASSPHRASE";

// The sites of `examples/clover.toml`, which are also `clover serve`'s defaults, are the test
// kit's: a client is placed at a site by its source address.
pub use clover_testkit::sites::{DUBLIN, SINGAPORE};

// ---------------------------------------------------------------------------------------------
// Commands run to completion
// ---------------------------------------------------------------------------------------------

/// A `clover` command in `cwd`, with an environment that does not leak from the test's own:
/// no passphrase unless the test sets one, plain-text logs at info level.
pub fn clover(cwd: &Path) -> Command {
    let mut command = Command::new(BIN);
    command
        .current_dir(cwd)
        .env_remove(PASSPHRASE_ENV)
        .env_remove("CLOVER_LOG_FORMAT")
        .env("CLOVER_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    command
}

/// [`clover`] with the keyring's passphrase in the environment.
pub fn clover_with_passphrase(cwd: &Path, passphrase: &str) -> Command {
    let mut command = clover(cwd);
    command.env(PASSPHRASE_ENV, passphrase);
    command
}

/// Drains a child's pipe on a thread, line by line, into a shared string; each line is also
/// sent on the returned channel. The thread runs until the pipe closes, so the child never
/// blocks on a full pipe.
fn drain(pipe: impl Read + Send + 'static) -> (Arc<Mutex<String>>, mpsc::Receiver<String>, JoinHandle<()>) {
    let text = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    let shared = Arc::clone(&text);
    let handle = std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&raw).into_owned();
                    shared.lock().unwrap().push_str(&line);
                    // The receiver may be gone; keep draining regardless.
                    let _ = tx.send(line);
                }
            }
        }
    });
    (text, rx, handle)
}

/// Waits for `child` to exit, polling, for at most `timeout`.
pub fn wait_for_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a finished command did.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a command to completion (killing it after [`PATIENCE`]) and collects its output.
pub fn run(mut command: Command) -> Finished {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (stdout, _, out_thread) = drain(child.stdout.take().unwrap());
    let (stderr, _, err_thread) = drain(child.stderr.take().unwrap());
    let status = wait_for_exit(&mut child, PATIENCE);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    out_thread.join().unwrap();
    err_thread.join().unwrap();
    let stdout = stdout.lock().unwrap().clone();
    let stderr = stderr.lock().unwrap().clone();
    let Some(status) = status else {
        panic!("{command:?} did not finish within {PATIENCE:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    };
    Finished { status, stdout, stderr }
}

/// Runs a command that must succeed.
pub fn run_ok(command: Command) -> Finished {
    let finished = run(command);
    assert!(finished.status.success(), "failed: {finished:?}");
    finished
}

/// The trimmed stdout of a command that must succeed.
pub fn stdout_of(command: Command) -> String {
    run_ok(command).stdout.trim().to_owned()
}

/// Sends a signal to a process by name (`TERM`, `KILL`, `HUP`; no libc: `unsafe` is forbidden
/// here).
pub fn signal(name: &str, pid: u32) {
    let status = Command::new("kill").args([&format!("-{name}"), &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill -{name} {pid} failed: {status}");
}

/// A token for the employee `ana` of the eu region at dublin-1, with `roles` (comma-separated,
/// none when empty), minted by the binary from `command` (a [`clover`] command), whose
/// development issuer is found with `data` (`--data-dir DIR` or `--config FILE`).
pub fn mint_token(mut command: Command, data: &[&str], roles: &str) -> String {
    command.arg("token").args(["--principal", "ana", "--kind", "employee", "--region", "eu", "--site", "dublin-1"]);
    if !roles.is_empty() {
        command.args(["--roles", roles]);
    }
    command.args(["--ttl", "1h"]).args(data);
    let finished = run_ok(command);
    let token = finished.stdout.trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "not a JWT: {finished:?}");
    token
}

/// A token for the employee `ana` of the eu region at dublin-1 with the roles support and
/// analyst, minted by the binary in `cwd` from the development issuer in `data_dir`.
pub fn employee_token(cwd: &Path, data_dir: &Path) -> String {
    mint_token(clover(cwd), &["--data-dir", data_dir.to_str().unwrap()], "support,analyst")
}

// ---------------------------------------------------------------------------------------------
// Processes kept running
// ---------------------------------------------------------------------------------------------

/// A running `clover` server (a boundary, a custodian, a witness), killed when dropped, pass or
/// fail.
pub struct Process {
    child: Child,
    /// Where it listens, as it said: `http://ADDR` or `https://ADDR`.
    pub url: String,
    /// The address in `url`.
    pub addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
    stderr_thread: Option<JoinHandle<()>>,
}

impl Process {
    /// Starts `command` and waits for the line in which it says where it serves:
    /// `clover: ... on http(s)://ADDR ...`.
    pub fn start(mut command: Command) -> Self {
        let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let (stderr, lines, stderr_thread) = drain(child.stderr.take().unwrap());
        // From here on the guard owns the child, so that a failed start still kills it.
        let mut process = Self {
            child,
            url: String::new(),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            stderr,
            stderr_thread: Some(stderr_thread),
        };
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some((scheme, addr)) = serving_address(&line) {
                        process.url = format!("{scheme}://{addr}");
                        process.addr = addr;
                        return process;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("{command:?} did not report its address within {PATIENCE:?}; stderr:\n{}", process.stderr())
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = wait_for_exit(&mut process.child, PATIENCE);
                    panic!("{command:?} exited ({status:?}) before serving; stderr:\n{}", process.stderr())
                }
            }
        }
    }

    /// Starts `clover serve --listen 127.0.0.1:0 <args>` from `command` (a [`clover`] command)
    /// and waits until it serves.
    pub fn serve(mut command: Command, args: &[&str]) -> Self {
        command.arg("serve").args(["--listen", "127.0.0.1:0"]).args(args);
        Self::start(command)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `path` on this server.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for the process to exit, for at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_for_exit(&mut self.child, timeout)
    }

    /// Sends SIGTERM and waits for a clean exit; returns the whole stderr.
    pub fn stop(mut self) -> String {
        signal("TERM", self.pid());
        let Some(status) = self.wait(PATIENCE) else {
            panic!("the process did not stop within {PATIENCE:?} of SIGTERM; stderr:\n{}", self.stderr());
        };
        if let Some(thread) = self.stderr_thread.take() {
            thread.join().unwrap();
        }
        assert!(status.success(), "the process exited with {status} after SIGTERM; stderr:\n{}", self.stderr());
        self.stderr()
    }

    /// Sends SIGKILL and waits (without blocking the runtime) until the process is gone.
    #[cfg(unix)]
    pub async fn kill_hard(&mut self) -> ExitStatus {
        signal("KILL", self.pid());
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the process still runs {PATIENCE:?} after SIGKILL");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // A no-op on a child already reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(thread) = self.stderr_thread.take() {
            let _ = thread.join();
        }
    }
}

/// The scheme and address in a line such as `clover: serving region "eu" on
/// http://127.0.0.1:PORT (data in ...)`, `clover: custodian of region "eu" on https://...` or
/// `clover: witness NAME+ID+KEY on http://...`.
fn serving_address(line: &str) -> Option<(&'static str, SocketAddr)> {
    line.strip_prefix("clover: ")?;
    let (scheme, after) = ["http", "https"]
        .into_iter()
        .find_map(|scheme| line.split_once(&format!(" on {scheme}://")).map(|(_, after)| (scheme, after)))?;
    let addr = after.split_whitespace().next()?;
    Some((scheme, addr.parse().unwrap_or_else(|e| panic!("unparseable address in {line:?}: {e}"))))
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// An HTTP client whose connections come from `from`, so that a boundary places them at that
/// site.
pub fn client(from: &str) -> reqwest::Client {
    let from: IpAddr = from.parse().unwrap();
    reqwest::Client::builder().local_address(from).no_proxy().timeout(PATIENCE).build().unwrap()
}

/// Registers an eu subject from dublin-1; must answer 201.
pub async fn create_subject(server: &Process, token: &str, subject: &str) {
    let response = client(DUBLIN)
        .put(server.at(&format!("/v1/subjects/{subject}")))
        .bearer_auth(token)
        .json(&json!({"home_region": "eu", "birth_date": "2011-05-01"}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 201, "PUT subject: {body}");
}

/// Writes a profile record from dublin-1; must answer 201. Returns its id and log index.
pub async fn write_record(server: &Process, token: &str, subject: &str, fields: &Value) -> (String, u64) {
    let response = client(DUBLIN)
        .post(server.at(&format!("/v1/subjects/{subject}/records")))
        .bearer_auth(token)
        .json(&json!({"category": "profile", "fields": fields}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 201, "POST record: {text}");
    acknowledgement(&text).unwrap_or_else(|| panic!("no record_id and log_index in {text}"))
}

/// The `(record_id, log_index)` of a 201 answer to a write.
pub fn acknowledgement(text: &str) -> Option<(String, u64)> {
    let body: Value = serde_json::from_str(text).ok()?;
    Some((body["record_id"].as_str()?.to_owned(), body["log_index"].as_u64()?))
}

/// A proxy in front of `upstream` that passes every GET through `alter(path, body)`.
pub async fn proxy(upstream: String, alter: fn(&str, Vec<u8>) -> Vec<u8>) -> String {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let (client, upstream) = (client.clone(), upstream.clone());
        async move {
            let response = client.get(format!("{upstream}{uri}")).send().await.unwrap();
            let status = response.status().as_u16();
            let body = response.bytes().await.unwrap().to_vec();
            (axum::http::StatusCode::from_u16(status).unwrap(), alter(uri.path(), body))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}
