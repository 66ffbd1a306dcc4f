//! TLS between Clover's processes, as a user sets it up: `clover init --dev-tls`, a boundary
//! over TLS, a custodian and a witness over mutual TLS, and plain HTTP refused off loopback.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Finished, PATIENCE, Process, clover_with_passphrase, mint_token, run, stdout_of};

fn clover(dir: &Path) -> Command {
    clover_with_passphrase(dir, "tls-test")
}

/// Starts `command` and waits for it to say that it serves over TLS.
fn start(command: Command) -> Process {
    let process = Process::start(command);
    assert!(process.url.starts_with("https://"), "the process did not start over TLS: {}", process.url);
    process
}

/// Runs `command` to completion: whether it succeeded, its stdout and its stderr.
fn output(command: Command) -> (bool, String, String) {
    let Finished { status, stdout, stderr } = run(command);
    (status.success(), stdout, stderr)
}

fn reserve() -> (std::net::TcpListener, u16) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

fn client(tls: &Path, identity: Option<&str>) -> reqwest::Client {
    clover_tls::ClientTls {
        ca: Some(tls.join("ca.pem")),
        cert: identity.map(|name| tls.join(format!("{name}.pem"))),
        key: identity.map(|name| tls.join(format!("{name}.key"))),
    }
    .client()
    .unwrap()
}

#[test]
fn plain_http_off_loopback_is_refused_by_every_listener() {
    let dir = tempfile::tempdir().unwrap();
    let mut serve = clover(dir.path());
    serve.args(["serve", "--data-dir", "data", "--listen", "0.0.0.0:0"]);
    let (ok, _, err) = output(serve);
    assert!(!ok);
    assert!(err.contains("refusing to serve plain HTTP on 0.0.0.0:0"), "{err}");
    assert!(!dir.path().join("data").exists(), "nothing is set up for a refused configuration");

    let mut init = clover(dir.path());
    init.args(["init", "--data-dir", "real"]);
    stdout_of(init);
    let mut vkey = clover(dir.path());
    vkey.args(["log", "vkey", "--data-dir", "real"]);
    let vkey = stdout_of(vkey);

    let mut custodian = clover(dir.path());
    custodian.args(["custodian", "serve", "--dir", "custodian", "--listen", "0.0.0.0:0"]);
    custodian.args(["--log-url", "http://127.0.0.1:1", "--log-vkey", &vkey]);
    let (ok, _, err) = output(custodian);
    assert!(!ok);
    assert!(err.contains("refusing to serve the custodian over plain HTTP on 0.0.0.0:0"), "{err}");

    let mut witness = clover(dir.path());
    witness.args(["audit", "witness", "--name", "w.example", "--key", "w.key", "--state", "w.state"]);
    witness.args(["--log", &vkey, "--listen", "0.0.0.0:0"]);
    let (ok, _, err) = output(witness);
    assert!(!ok);
    assert!(err.contains("refusing to serve the witness over plain HTTP on 0.0.0.0:0"), "{err}");

    // Mutual TLS names the clients it takes: a custodian with a certificate and no
    // --allow-client is refused.
    let mut custodian = clover(dir.path());
    custodian.args([
        "custodian",
        "serve",
        "--dir",
        "custodian",
        "--log-url",
        "http://127.0.0.1:1",
        "--log-vkey",
        &vkey,
    ]);
    custodian.args(["--tls-cert", "c.pem", "--tls-key", "c.key", "--client-ca", "ca.pem"]);
    let (ok, _, err) = output(custodian);
    assert!(!ok);
    assert!(err.contains("--allow-client"), "{err}");

    // A boundary whose custodian is plain HTTP on another machine is refused too.
    std::fs::write(dir.path().join("c.toml"), "[keys]\ncustodian = \"http://10.1.2.3:7880\"\n").unwrap();
    let mut serve = clover(dir.path());
    serve.args(["serve", "--data-dir", "data", "--config", "c.toml"]);
    let (ok, _, err) = output(serve);
    assert!(!ok);
    assert!(err.contains("use https:// (mutual TLS)"), "{err}");
}

#[tokio::test]
async fn dev_tls_a_boundary_its_custodian_and_a_witness_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let mut init = clover(dir.path());
    init.args(["init", "--data-dir", "data", "--dev-tls"]);
    let (ok, _, err) = output(init);
    assert!(ok, "{err}");
    assert!(err.contains("development TLS in data/tls"), "{err}");
    let tls: PathBuf = dir.path().join("data").join("tls");
    for file in ["ca.pem", "gateway.pem", "gateway.key", "custodian.pem", "witness.pem", "ingest-dublin-1.pem"] {
        assert!(tls.join(file).exists(), "{file}");
    }
    // Running it again makes nothing new: the CA is not replaced.
    let mut again = clover(dir.path());
    again.args(["init", "--data-dir", "data", "--dev-tls"]);
    let (ok, _, err) = output(again);
    assert!(!ok && err.contains("exists already"), "{err}");

    // The configuration it wrote is this boundary's, with [tls] added.
    let written = std::fs::read_to_string(tls.join("clover.toml")).unwrap();
    assert!(written.contains("region = \"eu\"") && written.contains("[[sites]]"), "{written}");

    // A configuration that listens off loopback is served once the flags give it a certificate.
    std::fs::write(dir.path().join("open.toml"), "data_dir = \"data\"\nlisten = \"0.0.0.0:0\"\n").unwrap();
    let mut open = clover(dir.path());
    open.args(["serve", "--config", "open.toml", "--tls-cert"]);
    open.args([tls.join("gateway.pem").to_str().unwrap(), "--tls-key", tls.join("gateway.key").to_str().unwrap()]);
    let open = start(open);
    assert!(open.url.starts_with("https://0.0.0.0:"), "{}", open.url);
    drop(open);

    let mut vkey = clover(dir.path());
    vkey.args(["log", "vkey", "--data-dir", "data"]);
    let vkey = stdout_of(vkey);
    let ca = tls.join("ca.pem");
    let path = |name: &str| tls.join(name).to_str().unwrap().to_owned();

    // The witness: mutual TLS, the gateway's certificate only.
    let mut witness_vkey = clover(dir.path());
    witness_vkey.args(["audit", "witness", "--name", "witness.example", "--key", "witness.p8", "--state", "w.state"]);
    witness_vkey.args(["--log", &vkey, "--print-vkey"]);
    let witness_vkey = stdout_of(witness_vkey);
    let mut witness = clover(dir.path());
    witness.args(["audit", "witness", "--name", "witness.example", "--key", "witness.p8", "--state", "w.state"]);
    witness.args(["--log", &vkey, "--listen", "127.0.0.1:0"]);
    witness.args([
        "--tls-cert",
        &path("witness.pem"),
        "--tls-key",
        &path("witness.key"),
        "--client-ca",
        &path("ca.pem"),
    ]);
    witness.args(["--allow-client", "spiffe://clover.local/gateway"]);
    let witness = start(witness);

    // The custodian: mutual TLS, the gateway's and its own operator's certificates only; it
    // reads the boundary's log over TLS.
    let (reserved, port) = reserve();
    let boundary_url = format!("https://127.0.0.1:{port}");
    let mut custodian = clover(dir.path());
    custodian.args(["custodian", "serve", "--dir", "custodian", "--listen", "127.0.0.1:0"]);
    custodian.args(["--log-url", &boundary_url, "--log-vkey", &vkey, "--ca", &path("ca.pem")]);
    custodian.args(["--tls-cert", &path("custodian.pem"), "--tls-key", &path("custodian.key")]);
    custodian.args(["--client-ca", &path("ca.pem"), "--allow-client", "spiffe://clover.local/gateway"]);
    custodian.args(["--allow-client", "spiffe://clover.local/custodian"]);
    let custodian = start(custodian);

    // The boundary, on the configuration `--dev-tls` wrote, with the custodian and the witness.
    let config = tls.join("clover.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("\n[keys]\n"), "{text}");
    text = text.replace("\n[keys]\n", &format!("\n[keys]\ncustodian = \"{}\"\n", custodian.url));
    text.push_str(&format!("\n[[log.witnesses]]\nurl = \"{}\"\nvkey = \"{witness_vkey}\"\n", witness.url));
    std::fs::write(&config, text).unwrap();
    let mut serve = clover(dir.path());
    serve.args(["serve", "--config", config.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")]);
    drop(reserved);
    let boundary = start(serve);
    assert_eq!(boundary.url, boundary_url);

    // An employee over TLS: a write and a read, whose data key the custodian hands out over
    // mutual TLS.
    let token = mint_token(clover(dir.path()), &["--data-dir", "data"], "support");
    let employee = client(&tls, None);
    let subject = format!("{boundary_url}/v1/subjects/u-1");
    let put =
        employee.put(&subject).bearer_auth(&token).json(&json!({"home_region": "eu", "birth_date": "1990-01-01"}));
    assert_eq!(put.send().await.unwrap().status(), 201);
    let post = employee
        .post(format!("{subject}/records"))
        .bearer_auth(&token)
        .json(&json!({"category": "profile", "fields": {"display_name": "Aoife"}}));
    let record: Value = post.send().await.unwrap().json().await.unwrap();
    let record_url = format!("{boundary_url}/v1/records/{}", record["record_id"].as_str().unwrap());
    let read =
        employee.get(&record_url).bearer_auth(&token).header("X-Clover-Purpose", "support").send().await.unwrap();
    assert_eq!(read.status(), 200);

    // The service at dublin-1, by its certificate alone.
    let service = client(&tls, Some("ingest-dublin-1"));
    let read: Value =
        service.get(&record_url).header("X-Clover-Purpose", "support").send().await.unwrap().json().await.unwrap();
    assert_eq!(read["fields"]["display_name"], "Aoife", "{read}");
    // The Singapore service's certificate from this (Dublin) address: refused.
    let singapore = client(&tls, Some("ingest-singapore-1"));
    let refused = singapore.get(&record_url).header("X-Clover-Purpose", "support").send().await.unwrap();
    assert_eq!(refused.status(), 403);

    // The custodian takes only mutual TLS, and only the certificates it allows.
    assert!(client(&tls, None).get(format!("{}/v1/journal", custodian.url)).send().await.is_err());
    assert!(client(&tls, Some("witness")).get(format!("{}/v1/journal", custodian.url)).send().await.is_err());
    let plain = custodian.url.replace("https://", "http://");
    assert!(reqwest::Client::new().get(format!("{plain}/v1/journal")).send().await.is_err());
    let mut status = clover(dir.path());
    status.args(["custodian", "status", "--url", &custodian.url, "--dir", "custodian", "--ca", &path("ca.pem")]);
    status.args(["--cert", &path("custodian.pem"), "--key", &path("custodian.key")]);
    assert!(stdout_of(status).contains("kek v1 (current)"));

    // An auditor verifies the log over TLS, with the witness's cosignature.
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let mut verify = clover(dir.path());
        verify.args(["audit", "verify", "--url", &boundary_url, "--vkey", &vkey, "--witness", &witness_vkey]);
        verify.args(["--ca", ca.to_str().unwrap()]);
        let (ok, out, err) = output(verify);
        if ok {
            assert!(out.contains("cosigned by witness.example"), "{out}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no cosigned checkpoint over TLS: {err}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // The load generator over TLS: every read answered as expected.
    let mut bench = clover(dir.path());
    bench.args(["bench", "http", "--url", &boundary_url, "--ca", ca.to_str().unwrap(), "--data-dir", "data"]);
    bench.args(["--requests", "20", "--concurrency", "4", "--records", "2"]);
    let report = stdout_of(bench);
    assert!(report.contains("20 reads answered"), "{report}");
}
