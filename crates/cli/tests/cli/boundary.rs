//! A boundary's life as a user sees it: `clover serve` with no setup, `clover init`, restarts,
//! SIGTERM with a request in flight, configuration and passphrase errors; and `clover bench`.
//!
//! Every test runs in its own temporary directory (used as the working directory and the data
//! directory), starts its own `clover serve` on an ephemeral port, and kills whatever it started
//! when it ends, pass or fail.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{
    DUBLIN, PASSPHRASE_ENV, PATIENCE, Process, SINGAPORE, client, clover, create_subject, employee_token, run, run_ok,
    signal, write_record,
};

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// Reads a record from `from`; returns the status, the content type and the JSON body.
async fn read_record(server: &Process, token: &str, record: &str, from: &str) -> (u16, String, Value) {
    let response = client(from)
        .get(server.at(&format!("/v1/records/{record}")))
        .bearer_auth(token)
        .header("X-Clover-Purpose", "support")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type =
        response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET record: not JSON ({e}): {text}"));
    (status, content_type, body)
}

/// One HTTP/1.1 response head and body, read off a raw connection.
struct RawResponse {
    status_line: String,
    body: Vec<u8>,
}

/// A raw connection that keeps the bytes read past the end of one response.
struct RawConnection {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl RawConnection {
    fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect_timeout(&addr, PATIENCE).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.set_write_timeout(Some(PATIENCE)).unwrap();
        Self { stream, buffer: Vec::new() }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
        self.stream.flush().unwrap();
    }

    /// Reads more bytes into the buffer; false at end of stream.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).unwrap_or_else(|e| panic!("reading the response: {e}"));
        self.buffer.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Reads one response head (which may be an interim `100 Continue`); returns the status line
    /// and the header lines.
    fn read_head(&mut self) -> (String, Vec<String>) {
        loop {
            if let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buffer[..end]).into_owned();
                self.buffer.drain(..end + 4);
                let mut lines = head.split("\r\n").map(str::to_owned);
                let status_line = lines.next().unwrap_or_default();
                return (status_line, lines.collect());
            }
            let got_more = self.fill();
            assert!(got_more, "connection closed mid-head; got {:?}", String::from_utf8_lossy(&self.buffer));
        }
    }

    /// Reads a final response: head, then a `Content-Length` body (or everything to the end of
    /// the stream when there is none).
    fn read_response(&mut self) -> RawResponse {
        let (status_line, headers) = self.read_head();
        let length = headers.iter().find_map(|h| {
            let (name, value) = h.split_once(':')?;
            name.trim().eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().unwrap())
        });
        match length {
            Some(length) => {
                while self.buffer.len() < length {
                    let got_more = self.fill();
                    assert!(got_more, "connection closed mid-body after {status_line:?}");
                }
                let body = self.buffer.drain(..length).collect();
                RawResponse { status_line, body }
            }
            None => {
                while self.fill() {}
                RawResponse { status_line, body: std::mem::take(&mut self.buffer) }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn serve_with_no_setup_initialises_and_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Process::serve(clover(tmp.path()), &[]);

    let stderr = server.stderr();
    assert!(stderr.contains("clover: initialised ./clover-data"), "stderr:\n{stderr}");
    assert!(stderr.contains("passphrase   generated into ./clover-data/passphrase (mode 0600)"), "stderr:\n{stderr}");
    assert!(stderr.contains("clover: serving region \"eu\" on http://127.0.0.1:"), "stderr:\n{stderr}");
    assert!(stderr.contains("(data in ./clover-data)"), "stderr:\n{stderr}");

    let data_dir = tmp.path().join("clover-data");
    for file in ["keyring.json", "dev-issuer.p8", "passphrase"] {
        assert!(data_dir.join(file).is_file(), "{file} missing from {}", data_dir.display());
    }
    #[cfg(unix)]
    {
        assert_eq!(mode(&data_dir.join("passphrase")), 0o600, "passphrase file mode");
        assert_eq!(mode(&data_dir.join("dev-issuer.p8")), 0o600, "issuer key file mode");
        assert_eq!(mode(&data_dir) & 0o077, 0, "data directory is open to others");
    }

    let health = client(DUBLIN).get(server.at("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap().trim(), "ok");

    let token = employee_token(tmp.path(), &data_dir);
    create_subject(&server, &token, "s-1").await;
    let fields = json!({"display_name": "Aoife", "email": "aoife@example.ie"});
    let (record, _) = write_record(&server, &token, "s-1", &fields).await;

    let (status, _, body) = read_record(&server, &token, &record, DUBLIN).await;
    assert_eq!(status, 200, "read from dublin-1: {body}");
    assert_eq!(body["fields"], fields, "{body}");
    assert_eq!(body["view"], "full", "{body}");
    assert_eq!(body["record_id"], record.as_str(), "{body}");
    assert_eq!(body["subject_id"], "s-1", "{body}");

    let (status, content_type, body) = read_record(&server, &token, &record, SINGAPORE).await;
    assert_eq!(status, 403, "read from singapore-1: {body}");
    assert!(content_type.starts_with("application/problem+json"), "content type {content_type:?}");
    assert!(body.get("decision").is_some(), "no decision in {body}");
    assert_eq!(body["decision"]["effect"], "deny", "{body}");
    assert!(body.get("fields").is_none(), "a denial leaked fields: {body}");
    assert!(!body.to_string().contains("aoife@example.ie"), "a denial leaked data: {body}");

    server.stop();
}

#[test]
fn init_refuses_to_overwrite_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let init = || {
        let mut command = clover(tmp.path());
        command.arg("init").arg("--data-dir").arg(&data_dir);
        command
    };

    let first = run_ok(init());
    assert!(first.stderr.contains("clover: initialised"), "{first:?}");
    let files: Vec<PathBuf> =
        ["keyring.json", "dev-issuer.p8", "passphrase"].iter().map(|f| data_dir.join(f)).collect();
    let before: Vec<Vec<u8>> =
        files.iter().map(|f| std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()))).collect();
    #[cfg(unix)]
    for file in &files {
        assert_eq!(mode(file), 0o600, "{} mode", file.display());
    }

    // Again, as is; again with another region; again with a passphrase in the environment:
    // each must refuse and leave every key as it was.
    let mut with_region = init();
    with_region.args(["--region", "us"]);
    let mut with_passphrase = init();
    with_passphrase.env(PASSPHRASE_ENV, "another passphrase");
    for command in [init(), with_region, with_passphrase] {
        let again = run(command);
        assert!(!again.status.success(), "a second init succeeded: {again:?}");
        assert!(again.stderr.contains("refusing to overwrite"), "{again:?}");
        for (file, bytes) in files.iter().zip(&before) {
            assert_eq!(&std::fs::read(file).unwrap(), bytes, "{} changed", file.display());
        }
    }
}

#[tokio::test]
async fn sigterm_finishes_requests_in_flight() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Process::serve(clover(tmp.path()), &[]);
    let token = employee_token(tmp.path(), &tmp.path().join("clover-data"));
    create_subject(&server, &token, "s-1").await;

    let body = br#"{"category": "profile", "fields": {"display_name": "Aoife", "note": "written while stopping"}}"#;
    let (first, rest) = body.split_at(body.len() / 2);
    let mut connection = RawConnection::open(server.addr);
    // `Expect: 100-continue` makes the server say when the handler starts reading the body, so
    // the request is known to be in flight (headers parsed, handler running) before SIGTERM.
    let head = format!(
        "POST /v1/subjects/s-1/records HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        server.addr,
        body.len()
    );
    connection.send(head.as_bytes());
    let (interim, _) = connection.read_head();
    assert!(interim.starts_with("HTTP/1.1 100"), "expected 100 Continue, got {interim:?}");
    connection.send(first);

    signal("TERM", server.pid());
    // The server has taken the signal once it stops accepting connections.
    let deadline = Instant::now() + PATIENCE;
    loop {
        match TcpStream::connect_timeout(&server.addr, Duration::from_secs(1)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ if Instant::now() >= deadline => {
                panic!("still accepting connections {PATIENCE:?} after SIGTERM; stderr:\n{}", server.stderr())
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    connection.send(rest);

    let response = connection.read_response();
    let text = String::from_utf8_lossy(&response.body).into_owned();
    assert!(
        response.status_line.starts_with("HTTP/1.1 201"),
        "in-flight request answered {:?}: {text}\nstderr:\n{}",
        response.status_line,
        server.stderr()
    );
    let created: Value = serde_json::from_str(&text).unwrap();
    assert!(created["record_id"].is_string(), "{created}");

    let addr = server.addr;
    let mut server = server;
    let status =
        server.wait(PATIENCE).unwrap_or_else(|| panic!("did not exit after SIGTERM; stderr:\n{}", server.stderr()));
    assert!(status.success(), "exited with {status}; stderr:\n{}", server.stderr());
    let error = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map(|_| ()).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused, "after shutdown: {error}");
}

#[tokio::test]
async fn a_second_serve_reuses_the_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("clover-data");
    let fields = json!({"display_name": "Aoife", "languages": ["ga", "en"], "age_band": 3});

    let server = Process::serve(clover(tmp.path()), &[]);
    let token = employee_token(tmp.path(), &data_dir);
    create_subject(&server, &token, "s-1").await;
    let (record, _) = write_record(&server, &token, "s-1", &fields).await;
    server.stop();
    let keyring = std::fs::read(data_dir.join("keyring.json")).unwrap();
    let issuer = std::fs::read(data_dir.join("dev-issuer.p8")).unwrap();
    let passphrase = std::fs::read(data_dir.join("passphrase")).unwrap();

    let server = Process::serve(clover(tmp.path()), &[]);
    let stderr = server.stderr();
    assert!(!stderr.contains("initialised"), "the second serve initialised again:\n{stderr}");
    // The token minted before the restart still verifies: the issuer key persisted.
    let (status, _, body) = read_record(&server, &token, &record, DUBLIN).await;
    assert_eq!(status, 200, "read after restart: {body}\nstderr:\n{}", server.stderr());
    assert_eq!(body["fields"], fields, "{body}");
    assert_eq!(body["view"], "full", "{body}");
    // And so does a fresh one.
    let fresh = employee_token(tmp.path(), &data_dir);
    let (status, _, body) = read_record(&server, &fresh, &record, DUBLIN).await;
    assert_eq!(status, 200, "read with a fresh token: {body}");
    assert_eq!(body["fields"], fields, "{body}");
    server.stop();

    assert_eq!(std::fs::read(data_dir.join("keyring.json")).unwrap(), keyring, "keyring changed");
    assert_eq!(std::fs::read(data_dir.join("dev-issuer.p8")).unwrap(), issuer, "issuer key changed");
    assert_eq!(std::fs::read(data_dir.join("passphrase")).unwrap(), passphrase, "passphrase changed");
}

// ---------------------------------------------------------------------------------------------
// The log's recovery, as `clover serve` meets it
// ---------------------------------------------------------------------------------------------

/// A data directory made by `clover init`, served once with a subject and two records written
/// and stopped; returns it and its log's directory.
async fn served_once(tmp: &Path) -> (PathBuf, PathBuf) {
    let data_dir = tmp.join("data");
    let mut init = clover(tmp);
    init.arg("init").arg("--data-dir").arg(&data_dir);
    run_ok(init);
    let server = Process::serve(clover(tmp), &["--data-dir", "data"]);
    let token = employee_token(tmp, &data_dir);
    create_subject(&server, &token, "s-1").await;
    for n in 0..2 {
        write_record(&server, &token, "s-1", &json!({"display_name": format!("Aoife {n}")})).await;
    }
    server.stop();
    let log_dir = data_dir.join("log");
    assert!(log_dir.join("entries").is_file(), "no log in {}", log_dir.display());
    (data_dir, log_dir)
}

/// Where each entry of an entries file starts (at its two-byte length), and where the last ends.
fn entry_starts(bytes: &[u8]) -> Vec<usize> {
    let mut starts = vec![0];
    let mut at = 0;
    while at + 2 <= bytes.len() {
        at += 2 + usize::from(u16::from_be_bytes([bytes[at], bytes[at + 1]]));
        starts.push(at);
    }
    assert_eq!(at, bytes.len(), "the entries file does not read as entries");
    starts
}

/// The size of the largest checkpoint in the log's two checkpoint files.
fn signed_size(log_dir: &Path) -> usize {
    ["checkpoint.0", "checkpoint.1"]
        .iter()
        .filter_map(|name| std::fs::read_to_string(log_dir.join(name)).ok())
        .filter_map(|note| note.lines().nth(1)?.parse().ok())
        .max()
        .unwrap_or_else(|| panic!("no checkpoint in {}", log_dir.display()))
}

/// Every file in the log's directory and below it, by path, with its bytes.
fn log_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(log_files(&path));
        } else {
            let bytes = std::fs::read(&path).unwrap();
            out.push((path, bytes));
        }
    }
    out.sort();
    out
}

/// Garbage after the last entry (what a write torn by a crash leaves): `clover serve` starts,
/// the garbage is moved to the quarantine beside the log, byte for byte, and the entries file
/// keeps every signed byte; the log goes on after them.
#[tokio::test]
async fn garbage_after_the_log_is_quarantined_and_the_boundary_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let (data_dir, log_dir) = served_once(tmp.path()).await;
    let good = std::fs::read(log_dir.join("entries")).unwrap();
    let held = entry_starts(&good).len() - 1;
    assert_eq!(signed_size(&log_dir), held, "every entry written is signed");
    let garbage = [&[0u8, 200][..], b"torn bytes of no entry at all"].concat();
    std::fs::write(log_dir.join("entries"), [good.as_slice(), &garbage].concat()).unwrap();

    let server = Process::serve(clover(tmp.path()), &["--data-dir", "data"]);
    let kept = log_dir.join("quarantine").join(format!("entries.{}", good.len()));
    assert_eq!(std::fs::read(&kept).unwrap(), garbage, "the garbage is kept in the quarantine");
    let stderr = server.stderr();
    assert!(stderr.contains("cutting an unacknowledged partial write"), "{stderr}");
    assert!(stderr.contains(&format!("log/quarantine/entries.{}", good.len())), "{stderr}");
    let entries = std::fs::read(log_dir.join("entries")).unwrap();
    assert_eq!(&entries[..good.len()], good.as_slice(), "every signed byte is still there");
    entry_starts(&entries);

    // The log goes on after the entries kept: a write is logged after them.
    let token = employee_token(tmp.path(), &data_dir);
    let (_, index) = write_record(&server, &token, "s-1", &json!({"display_name": "Aoife again"})).await;
    assert!(index >= held as u64, "the write's entry {index} is after the {held} entries kept");
    server.stop();
    let entries = std::fs::read(log_dir.join("entries")).unwrap();
    assert!(entries.starts_with(&good), "every signed byte is still there after the restart");
    assert_eq!(entry_starts(&entries).len() - 1, index as usize + 1, "the log ends with the write's entry");
    assert_eq!(std::fs::read(&kept).unwrap(), garbage);
}

/// A byte of a signed entry in the middle of the log damaged: `clover serve` refuses to start,
/// naming the entry, its byte offset and the quarantine, and leaves every file of the log as it
/// was.
#[tokio::test]
async fn a_damaged_signed_entry_stops_the_boundary_naming_it_and_the_log_is_left_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, log_dir) = served_once(tmp.path()).await;
    let mut bytes = std::fs::read(log_dir.join("entries")).unwrap();
    let starts = entry_starts(&bytes);
    let held = starts.len() - 1;
    assert_eq!(signed_size(&log_dir), held, "every entry written is signed");
    let index = held / 2;
    let (start, end) = (starts[index], starts[index + 1]);
    // A NUL byte is not JSON anywhere in an entry.
    bytes[start + 2 + (end - start - 2) / 2] = 0;
    std::fs::write(log_dir.join("entries"), &bytes).unwrap();
    let before = log_files(&log_dir);

    let mut serve = clover(tmp.path());
    serve.args(["serve", "--listen", "127.0.0.1:0", "--data-dir", "data"]);
    let refused = run(serve);
    assert!(!refused.status.success(), "served a log with a damaged signed entry: {refused:?}");
    assert!(!refused.stderr.contains("clover: serving"), "{refused:?}");
    let named = format!("entry {index} at byte {start} of \"data/log/entries\" is damaged");
    assert!(refused.stderr.contains(&named), "the entry is not named: {refused:?}");
    assert!(refused.stderr.contains("a signed checkpoint covers it"), "{refused:?}");
    assert!(refused.stderr.contains("\"data/log/quarantine\""), "the quarantine is not named: {refused:?}");
    assert_eq!(log_files(&log_dir), before, "every file of the log is as it was");
    assert!(!log_dir.join("quarantine").exists(), "nothing was quarantined");
}

#[test]
fn wrong_passphrase_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");

    let mut init = clover(tmp.path());
    init.arg("init").arg("--data-dir").arg(&data_dir).env(PASSPHRASE_ENV, "a");
    let finished = run_ok(init);
    assert!(finished.stderr.contains("from CLOVER_PASSPHRASE"), "{finished:?}");
    assert!(data_dir.join("keyring.json").is_file());
    assert!(!data_dir.join("passphrase").exists(), "a passphrase file was written although CLOVER_PASSPHRASE was set");

    let mut serve = clover(tmp.path());
    serve.arg("serve").args(["--listen", "127.0.0.1:0", "--data-dir"]).arg(&data_dir).env(PASSPHRASE_ENV, "b");
    let finished = run(serve);
    assert!(!finished.status.success(), "served with the wrong passphrase: {finished:?}");
    assert!(finished.stderr.contains("passphrase"), "{finished:?}");
    assert!(!finished.stderr.contains("clover: serving"), "{finished:?}");
}

#[test]
fn bad_config_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("bad.toml"), "region = \"eu\"\nlisten_on = \"127.0.0.1:0\"\n").unwrap();

    let mut serve = clover(tmp.path());
    serve.args(["serve", "--config", "bad.toml", "--listen", "127.0.0.1:0"]);
    let finished = run(serve);
    assert!(!finished.status.success(), "served with a bad configuration: {finished:?}");
    assert!(finished.stderr.contains("listen_on"), "the unknown key is not named: {finished:?}");
    assert!(finished.stderr.contains("bad.toml"), "the file is not named: {finished:?}");
    assert!(!tmp.path().join("clover-data").exists(), "a bad configuration still initialised a data directory");
}

#[test]
fn config_errors_name_their_cause_once() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("bad.toml"), "listen_on = \"127.0.0.1:0\"\n").unwrap();

    let mut serve = clover(tmp.path());
    serve.args(["serve", "--config", "bad.toml", "--listen", "127.0.0.1:0"]);
    let finished = run(serve);
    assert!(!finished.status.success(), "{finished:?}");
    assert_eq!(finished.stderr.matches("unknown field `listen_on`").count(), 1, "{finished:?}");

    let mut serve = clover(tmp.path());
    serve.args(["serve", "--config", "missing.toml", "--listen", "127.0.0.1:0"]);
    let finished = run(serve);
    assert!(!finished.status.success(), "{finished:?}");
    assert_eq!(finished.stderr.matches("No such file or directory").count(), 1, "{finished:?}");
}

// ---------------------------------------------------------------------------------------------
// clover bench: a smoke run of every scenario with tiny sizes (the real runs are in
// BENCHMARKS.md; CI only checks that they keep working)
// ---------------------------------------------------------------------------------------------

#[test]
fn bench_runs_every_scenario_against_its_baseline() {
    let tmp = tempfile::tempdir().unwrap();
    let mut command = clover(tmp.path());
    command.args(["bench", "run", "--ops", "40", "--records", "12", "--concurrency", "4", "--rounds", "2", "--json"]);
    let finished = run_ok(command);
    let rows: Vec<Value> = finished.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let scenarios: Vec<&str> = rows.iter().map(|r| r["scenario"].as_str().unwrap()).collect();
    assert_eq!(scenarios, ["read", "write", "deny", "pseudonymised", "append", "decide", "seal"], "{finished:?}");
    for row in &rows {
        for field in ["ops_per_second", "median_us", "p99_us", "baseline_ops_per_second", "baseline_median_us", "cost"]
        {
            let value = row[field].as_f64().unwrap();
            assert!(value.is_finite() && value > 0.0, "{field} of {row}");
        }
        assert!(row["p99_us"].as_f64().unwrap() >= row["median_us"].as_f64().unwrap(), "{row}");
        assert_eq!(row["ops"], 40, "{row}");
    }

    // The table names the baselines; an unknown scenario is refused, naming the known ones.
    let mut command = clover(tmp.path());
    command.args(["bench", "run", "decide", "seal", "--ops", "50"]);
    let table = run_ok(command).stdout;
    assert!(table.contains("trivial Cedar policy") && table.contains("raw AES-256-GCM"), "{table}");
    let mut command = clover(tmp.path());
    command.args(["bench", "run", "reed"]);
    let refused = run(command);
    assert!(!refused.status.success());
    assert!(refused.stderr.contains("no scenario \"reed\"") && refused.stderr.contains("pseudonymised"), "{refused:?}");
}

#[test]
fn bench_scale_measures_every_axis_and_draws_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut command = clover(tmp.path());
    command.args([
        "bench",
        "scale",
        "--records",
        "20,60",
        "--subjects",
        "5,15",
        "--policies",
        "0,10",
        "--log",
        "10,50",
    ]);
    command.args(["--ops", "30", "--concurrency", "4", "--svg", "curves.svg", "--json"]);
    let finished = run_ok(command);
    let points: Vec<Value> = finished.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let seen: Vec<(String, u64)> =
        points.iter().map(|p| (p["axis"].as_str().unwrap().to_owned(), p["size"].as_u64().unwrap())).collect();
    let expected = [("records", 20), ("records", 60), ("subjects", 5), ("subjects", 15), ("policies", 0)];
    let expected = expected.into_iter().chain([("policies", 10), ("log", 10), ("log", 50)]);
    assert_eq!(seen, expected.map(|(a, n)| (a.to_owned(), n)).collect::<Vec<_>>(), "{finished:?}");
    for point in &points {
        assert!(point["ops_per_second"].as_f64().unwrap() > 0.0 && point["cost"].as_f64().unwrap() > 0.0, "{point}");
        // The process's resident size at the point (a gateway in it: megabytes, not bytes).
        assert!(point["rss_mib"].as_f64().unwrap() > 1.0, "{point}");
    }
    let svg = std::fs::read_to_string(tmp.path().join("curves.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 8, "two curves in each of four panels");
    assert!(svg.contains("by extra policies") && svg.contains("by log size"));

    let mut command = clover(tmp.path());
    command.args(["bench", "scale", "--axes", "records,tables"]);
    let refused = run(command);
    assert!(!refused.status.success() && refused.stderr.contains("no axis \"tables\""), "{refused:?}");
}

/// The soak itself runs for minutes and needs root (not in CI); what it refuses, it refuses
/// before it starts anything.
#[test]
fn bench_soak_refuses_an_empty_run_before_starting_anything() {
    let tmp = tempfile::tempdir().unwrap();
    for args in [["--minutes", "0"], ["--rate", "0"]] {
        let mut command = clover(tmp.path());
        command.args(["bench", "soak", "--dir", "soak"]).args(args);
        let refused = run(command);
        assert!(!refused.status.success(), "{refused:?}");
        assert!(refused.stderr.contains("--minutes and --rate must be at least 1"), "{refused:?}");
        assert!(!tmp.path().join("soak").exists(), "a refused soak made its directory");
    }
}

#[test]
fn bench_http_baseline_compares_healthz_a_bare_read_and_the_audited_read_with_the_servers_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Process::serve(clover(tmp.path()), &["--data-dir", "data"]);
    let mut command = clover(tmp.path());
    command.args(["bench", "http", "--url", &server.url, "--data-dir", "data", "--baseline"]);
    command.args(["--server-pid", &server.pid().to_string()]);
    command.args(["--requests", "40", "--concurrency", "4", "--records", "3", "--json"]);
    let finished = run_ok(command);
    let report: Value = serde_json::from_str(&finished.stdout).unwrap();
    for phase in ["healthz", "bare", "audited"] {
        let phase = &report[phase];
        assert_eq!(phase["answers"]["sent"], 40, "{report}");
        assert_eq!(phase["answers"]["expected"], 40, "every request answered 200: {report}");
        assert!(phase["requests_per_second"].as_f64().unwrap() > 0.0, "{report}");
    }
    // The boundary's CPU and size come from /proc; the bare read's from its own process.
    for phase in ["healthz", "audited", "bare"] {
        assert!(report[phase]["server_cpu_us"].as_f64().is_some_and(|us| us >= 0.0), "{report}");
        assert!(report[phase]["server_resident_bytes"].as_u64().is_some_and(|b| b > 1 << 20), "{report}");
    }
    assert!(report["audited_over_healthz"].as_f64().is_some_and(|r| r > 0.0), "{report}");
    // The bare read answers the stored row, not the record: the audited reads were logged, the
    // bare ones were not (3 writes and 80 reads of the two rounds, with the subject's entry).
    assert!(report["audited_cpu_over_bare"].as_f64().is_some(), "{report}");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let detail: Value = runtime.block_on(async {
        client(DUBLIN).get(server.at("/healthz?detail=true")).send().await.unwrap().json().await.unwrap()
    });
    let size = detail["log_size"].as_u64().unwrap_or_else(|| panic!("{detail}"));
    assert!((84..200).contains(&size), "the log holds the writes and the 80 audited reads only: {size} entries");
    // Without --server-pid the table says how to get the CPU figures.
    let mut command = clover(tmp.path());
    command.args(["bench", "http", "--url", &server.url, "--data-dir", "data", "--baseline"]);
    command.args(["--requests", "8", "--concurrency", "2", "--records", "1"]);
    let table = run_ok(command).stdout;
    assert!(table.contains("audited read / /healthz") && table.contains("--server-pid"), "{table}");
}

#[test]
fn bench_http_drives_a_running_server_from_both_origins() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Process::serve(clover(tmp.path()), &["--data-dir", "data"]);
    let mut command = clover(tmp.path());
    command.args(["bench", "http", "--url", &server.url, "--data-dir", "data"]);
    command.args(["--requests", "60", "--concurrency", "4", "--records", "3", "--foreign-percent", "25", "--json"]);
    let finished = run_ok(command);
    let report: Value = serde_json::from_str(&finished.stdout).unwrap();
    assert_eq!(report["all"]["sent"], 60, "{report}");
    assert_eq!(report["region"]["sent"], 45, "{report}");
    assert_eq!(report["region"]["expected"], 45, "{report}");
    assert_eq!(report["foreign"]["sent"], 15, "{report}");
    assert_eq!(report["foreign"]["expected"], 15, "{report}");
    assert_eq!(report["all"]["unexpected"], 0, "{report}");
    assert_eq!(report["cut_short"], false);
    assert!(report["requests_per_second"].as_f64().unwrap() > 0.0);
    assert!(report["all"]["p99_us"].as_f64().unwrap() >= report["all"]["p50_us"].as_f64().unwrap());

    // Bounded in time: a limit too short for the records stops it with a clear error.
    let mut command = clover(tmp.path());
    command.args(["bench", "http", "--url", &server.url, "--data-dir", "data", "--records", "100000"]);
    command.args(["--max-time", "1s"]);
    let stopped = run(command);
    assert!(!stopped.status.success());
    assert!(stopped.stderr.contains("time limit"), "{stopped:?}");

    // The server logged every read, the refusals from abroad included (and the writes).
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let checkpoint = runtime
        .block_on(async { client(DUBLIN).get(server.at("/log/checkpoint")).send().await?.text().await })
        .unwrap();
    let size: u64 = checkpoint.lines().nth(1).unwrap().parse().unwrap();
    assert!(size > 60 + 3, "a checkpoint of {size} entries after 60 reads and 3 writes:\n{checkpoint}");
    server.stop();
}

#[test]
fn token_refuses_a_lifetime_the_boundary_would_refuse() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let mut init = clover(tmp.path());
    init.arg("init").arg("--data-dir").arg(&data_dir);
    run_ok(init);
    let token = |ttl: &str| {
        let mut command = clover(tmp.path());
        command
            .args(["token", "--principal", "ana", "--kind", "employee", "--region", "eu", "--site", "dublin-1"])
            .args(["--ttl", ttl, "--data-dir"])
            .arg(&data_dir);
        run(command)
    };
    let refused = token("2d");
    assert!(!refused.status.success(), "{refused:?}");
    assert!(refused.stderr.contains("max_token_lifetime_seconds (86400 s)"), "{refused:?}");
    assert!(refused.stdout.is_empty(), "{refused:?}");
    assert!(token("24h").status.success());
}

#[test]
fn bench_monitor_catches_up_on_a_small_log_against_its_baseline() {
    let tmp = tempfile::tempdir().unwrap();
    let mut command = clover(tmp.path());
    command.args(["bench", "monitor", "--entries", "3000", "--json"]);
    let finished = run_ok(command);
    let report: Value = serde_json::from_str(&finished.stdout).unwrap();
    assert_eq!(report["entries"], 3000, "{report}");
    assert!(report["monitor_per_second"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["baseline_per_second"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["alerts"].as_u64().unwrap() > 0, "the synthetic log raises alerts: {report}");
}
