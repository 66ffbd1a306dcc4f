//! The boundary over TLS, with real certificates made in the test: employees with bearer tokens
//! and no certificate, services known by their client certificates (their principal and site),
//! and every certificate that must be refused.

use std::path::{Path, PathBuf};

use clover_gateway::config::ServiceCertConfig;
use clover_tls::dev::{Ca, Leaf};
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

use crate::harness::{DUBLIN, SINGAPORE, TestApp, VIRGINIA, annex_of, log_entries, problem};

/// A CA, the boundary's certificate, and client certificates, in a directory of their own.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
}

fn uri(region: &str, site: &str, name: &str) -> String {
    format!("spiffe://clover.local/{region}/{site}/{name}")
}

impl Pki {
    fn new() -> Self {
        Self::named("test CA")
    }

    fn named(name: &str) -> Self {
        Self { dir: tempfile::tempdir().unwrap(), ca: Ca::new(name).unwrap() }
    }

    fn ca_path(&self) -> PathBuf {
        let path = self.dir.path().join("ca.pem");
        if !path.exists() {
            std::fs::write(&path, self.ca.issued().cert_pem).unwrap();
        }
        path
    }

    fn issue(&self, file: &str, leaf: Leaf) -> (PathBuf, PathBuf) {
        self.ca.issue(&leaf).unwrap().write_to(self.dir.path(), file).unwrap()
    }

    fn client_cert(&self, file: &str, name: &str) -> (PathBuf, PathBuf) {
        self.issue(file, Leaf { names: vec![name.to_owned()], server: false, ..Leaf::default() })
    }

    /// A boundary over TLS whose client CA is this one, knowing the `ingest` service at
    /// dublin-1, virginia-1 and singapore-1.
    async fn boundary(&self, configure: impl FnOnce(&mut clover_gateway::Config)) -> TestApp {
        let (cert, key) = self.issue("gateway", Leaf { names: vec!["127.0.0.1".into()], ..Leaf::default() });
        let ca = self.ca_path();
        TestApp::start_with(move |config| {
            config.tls.cert = Some(cert);
            config.tls.key = Some(key);
            config.tls.client_ca = Some(ca);
            config.tls.services = [("eu", "dublin-1"), ("us", "virginia-1"), ("sg", "singapore-1")]
                .into_iter()
                .map(|(region, site)| ServiceCertConfig {
                    san: uri(region, site, "ingest"),
                    principal: "ingest".parse().unwrap(),
                    site: site.parse().unwrap(),
                    roles: vec!["support".into(), "analytics".into()],
                })
                .collect();
            configure(config);
        })
        .await
    }
}

fn https(app: &TestApp, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", app.addr.port())
}

/// A client from `from` that trusts `ca` and presents `identity`.
fn client(from: &str, ca: Option<&Path>, identity: Option<&(PathBuf, PathBuf)>) -> reqwest::Client {
    let tls = clover_tls::ClientTls {
        ca: ca.map(Path::to_owned),
        cert: identity.map(|(cert, _)| cert.clone()),
        key: identity.map(|(_, key)| key.clone()),
    };
    tls.builder().unwrap().local_address(from.parse::<std::net::IpAddr>().unwrap()).build().unwrap()
}

/// Registers a subject and writes a profile record over TLS as an employee; returns its id.
async fn seed(app: &TestApp, ca: &Path) -> String {
    let employee = client(DUBLIN, Some(ca), None);
    let response = employee
        .put(https(app, "/v1/subjects/u-1"))
        .bearer_auth(app.token())
        .json(&json!({"home_region": "eu", "birth_date": "1990-01-01"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let response = employee
        .post(https(app, "/v1/subjects/u-1/records"))
        .bearer_auth(app.token())
        .json(&json!({"category": "profile", "fields": {"display_name": "Aoife", "email": "aoife@example.ie"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    response.json::<Value>().await.unwrap()["record_id"].as_str().unwrap().to_owned()
}

/// `GET /v1/records/{record}` over TLS, declaring `purpose`.
fn get_record(client: &reqwest::Client, app: &TestApp, record: &str, purpose: &str) -> reqwest::RequestBuilder {
    client.get(https(app, &format!("/v1/records/{record}"))).header("X-Clover-Purpose", purpose)
}

async fn read(client: &reqwest::Client, app: &TestApp, record: &str, purpose: &str) -> reqwest::Response {
    get_record(client, app, record, purpose).send().await.unwrap()
}

#[tokio::test]
async fn a_tls_client_is_served_and_plain_http_to_the_tls_listener_gets_nothing() {
    let pki = Pki::new();
    let app = pki.boundary(|_| {}).await;
    let ca = pki.ca_path();
    let record = seed(&app, &ca).await;

    // An employee: TLS, no client certificate, a bearer token.
    let response = get_record(&client(DUBLIN, Some(&ca), None), &app, &record, "support")
        .bearer_auth(app.token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["fields"]["display_name"], "Aoife");

    // Without a token and without a certificate: 401, as over plain HTTP.
    problem(read(&client(DUBLIN, Some(&ca), None), &app, &record, "support").await, 401, "unauthenticated").await;

    // Plain HTTP to the TLS listener: no HTTP answer at all.
    let plain = app.client(DUBLIN).get(app.url("/healthz")).bearer_auth(app.token()).send().await;
    assert!(plain.is_err(), "{plain:?}");
    // A client that does not trust the boundary's CA refuses the server.
    let untrusting = client(DUBLIN, None, None).get(https(&app, "/healthz")).send().await;
    assert!(untrusting.is_err(), "{untrusting:?}");
}

#[tokio::test]
async fn a_service_certificate_gets_its_sites_decisions_without_a_token() {
    let pki = Pki::new();
    // 127.0.0.1 is a trusted proxy: a forwarded address must not move a certificate's origin.
    let app = pki.boundary(|config| config.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await;
    let ca = pki.ca_path();
    let record = seed(&app, &ca).await;

    let dublin = pki.client_cert("ingest-dublin", &uri("eu", "dublin-1", "ingest"));
    let service = client(DUBLIN, Some(&ca), Some(&dublin));
    let response =
        get_record(&service, &app, &record, "support").header("X-Forwarded-For", SINGAPORE).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["view"], "full");
    assert_eq!(body["fields"]["display_name"], "Aoife");
    let index = body["log_index"].as_u64().unwrap();
    let entry = &log_entries(app.boundary.log()).await[usize::try_from(index).unwrap()];
    let pseudonym = app.boundary.principal_pseudonym("service", "ingest");
    assert_eq!(entry["principal"], json!({"pseudonym": pseudonym, "kind": "service", "region": "eu"}));
    assert_eq!(annex_of(&app.boundary, entry).await.principal.as_deref(), Some("ingest"));
    assert_eq!(
        entry["origin"],
        json!({"site": "dublin-1", "region": "eu"}),
        "the certificate's site, not the header's"
    );

    // The same service at virginia-1, from a Virginia address: the decisions of a US site.
    let virginia = pki.client_cert("ingest-virginia", &uri("us", "virginia-1", "ingest"));
    let service = client(VIRGINIA, Some(&ca), Some(&virginia));
    problem(read(&service, &app, &record, "support").await, 403, "forbidden").await;
    let response = read(&service, &app, &record, "analytics").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["view"], "pseudonymised");
    assert!(!body.to_string().contains("Aoife"), "{body}");

    // A bearer token sent with the certificate must be the same principal's.
    let response = get_record(&client(DUBLIN, Some(&ca), Some(&dublin)), &app, &record, "support")
        .bearer_auth(app.token())
        .send()
        .await
        .unwrap();
    let body = problem(response, 401, "unauthenticated").await;
    assert!(
        body["detail"].as_str().unwrap().contains("\"ana\"'s but the client certificate is \"ingest\"'s"),
        "{body}"
    );
}

#[tokio::test]
async fn a_singapore_certificate_from_an_eu_address_is_refused_and_logged() {
    let pki = Pki::new();
    let app = pki.boundary(|_| {}).await;
    let ca = pki.ca_path();
    let record = seed(&app, &ca).await;
    let before = app.boundary.log().size();

    let singapore = pki.client_cert("ingest-singapore", &uri("sg", "singapore-1", "ingest"));
    let body = problem(
        read(&client(DUBLIN, Some(&ca), Some(&singapore)), &app, &record, "support").await,
        403,
        "certificate-refused",
    )
    .await;
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("for site singapore-1 (region sg)"), "{body}");
    assert!(detail.contains("presented from an address of site dublin-1 (region eu)"), "{body}");
    assert!(body.get("fields").is_none() && !body.to_string().contains("Aoife"));

    // The refusal is in the log, at the index the answer gives, and nothing else happened.
    let index = body["log_index"].as_u64().unwrap();
    assert_eq!(index, before, "one entry: the refusal");
    assert_eq!(app.boundary.log().size(), before + 1);
    let entry = &log_entries(app.boundary.log()).await[usize::try_from(index).unwrap()];
    assert_eq!(entry["kind"], "access");
    assert_eq!(entry["action"], "authenticate");
    assert_eq!(entry["decision"]["effect"], "deny");
    assert_eq!(entry["principal"]["pseudonym"], app.boundary.principal_pseudonym("service", "ingest"));
    assert_eq!(entry["principal"]["region"], "sg");
    // Why, naming the certificate's service and sites, is in the annex; the public entry says
    // only that a certificate was refused.
    assert_eq!(entry["detail"], "client certificate refused");
    let annex = annex_of(&app.boundary, entry).await;
    assert_eq!(annex.principal.as_deref(), Some("ingest"));
    assert!(annex.note.as_deref().unwrap().contains("singapore-1"), "{annex:?}");
    assert_eq!(entry["origin"], json!({"site": "dublin-1", "region": "eu"}));
    assert_eq!(entry["subject"], Value::Null, "no subject: nothing was read");

    // From a Singapore address the same certificate is its site's: a Singapore caller.
    problem(read(&client(SINGAPORE, Some(&ca), Some(&singapore)), &app, &record, "support").await, 403, "forbidden")
        .await;
}

#[tokio::test]
async fn certificates_of_an_unknown_ca_expired_or_naming_no_service_are_refused() {
    let pki = Pki::new();
    let app = pki.boundary(|_| {}).await;
    let ca = pki.ca_path();
    let record = seed(&app, &ca).await;

    // Another CA's certificate, for a name the boundary knows: refused in the handshake.
    let other = Pki::named("another CA");
    let forged = other.client_cert("forged", &uri("eu", "dublin-1", "ingest"));
    let response = get_record(&client(DUBLIN, Some(&ca), Some(&forged)), &app, &record, "support").send().await;
    assert!(response.is_err(), "{response:?}");

    // The right CA, but expired: refused in the handshake.
    let now = OffsetDateTime::now_utc();
    let expired = pki.issue(
        "expired",
        Leaf {
            names: vec![uri("eu", "dublin-1", "ingest")],
            server: false,
            not_before: now - Duration::days(30),
            not_after: now - Duration::days(1),
            ..Leaf::default()
        },
    );
    let response = get_record(&client(DUBLIN, Some(&ca), Some(&expired)), &app, &record, "support").send().await;
    assert!(response.is_err(), "{response:?}");

    // The right CA, a name no service has: refused, and logged.
    let stranger = pki.client_cert("stranger", &uri("eu", "dublin-1", "scraper"));
    let body = problem(
        read(&client(DUBLIN, Some(&ca), Some(&stranger)), &app, &record, "support").await,
        403,
        "certificate-refused",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("scraper"), "{body}");
    let entry = &log_entries(app.boundary.log()).await[usize::try_from(body["log_index"].as_u64().unwrap()).unwrap()];
    assert_eq!(entry["action"], "authenticate");
    assert_eq!(entry["principal"], Value::Null);
    // The same certificate with an employee's token is not a service's: the token decides (a
    // device certificate an employee's browser sends, say).
    let response = get_record(&client(DUBLIN, Some(&ca), Some(&stranger)), &app, &record, "support")
        .bearer_auth(app.token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let entry = &log_entries(app.boundary.log()).await[usize::try_from(body["log_index"].as_u64().unwrap()).unwrap()];
    assert_eq!(entry["principal"]["pseudonym"], app.boundary.principal_pseudonym("employee", "ana"));

    // A certificate that names two services is refused: which one it is must not be a guess.
    let both = pki.issue(
        "both",
        Leaf {
            names: vec![uri("eu", "dublin-1", "ingest"), uri("sg", "singapore-1", "ingest")],
            server: false,
            ..Leaf::default()
        },
    );
    let body = problem(
        read(&client(DUBLIN, Some(&ca), Some(&both)), &app, &record, "support").await,
        403,
        "certificate-refused",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("names several services"), "{body}");

    // The boundary still serves the valid certificate after all of these.
    let dublin = pki.client_cert("ingest-dublin", &uri("eu", "dublin-1", "ingest"));
    assert_eq!(read(&client(DUBLIN, Some(&ca), Some(&dublin)), &app, &record, "support").await.status(), 200);

    // The refused handshakes are counted, by reason, and the certificate's expiry is a gauge.
    let metrics = client(DUBLIN, Some(&ca), None).get(https(&app, "/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    for reason in ["unknown-ca", "expired"] {
        let line = format!("clover_tls_connections_refused_total{{reason=\"{reason}\"}}");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    let expiry = metrics.lines().find_map(|l| l.strip_prefix("clover_tls_certificate_expiry_timestamp_seconds "));
    let expiry: f64 = expiry.expect("the expiry gauge").parse().unwrap();
    assert!(expiry > OffsetDateTime::now_utc().unix_timestamp() as f64, "{expiry}");
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart_and_the_reload_is_logged() {
    let pki = Pki::new();
    let app = pki.boundary(|_| {}).await;
    let ca = pki.ca_path();
    let cert = app.boundary.config().tls.cert.clone().unwrap();
    let key = app.boundary.config().tls.key.clone().unwrap();

    let renewed =
        pki.ca.issue(&Leaf { names: vec!["127.0.0.1".into(), "renewed.example".into()], ..Leaf::default() }).unwrap();
    std::fs::write(&key, renewed.key_pem).unwrap();
    std::fs::write(&cert, renewed.cert_pem).unwrap();

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let entries = log_entries(app.boundary.log()).await;
        if let Some(entry) = entries.iter().find(|e| e["action"] == "reload-tls") {
            assert!(entry["detail"].as_str().unwrap().contains("renewed.example"), "{entry}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the renewed certificate was not loaded");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // New connections get it, and are served.
    let response = client(DUBLIN, Some(&ca), None).get(https(&app, "/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}
