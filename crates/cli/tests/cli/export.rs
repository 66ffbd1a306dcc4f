//! `clover export` and `clover audit register` against a real boundary: a transfer into a file,
//! checked against what the boundary logged; the register recomputed from the public log, and
//! caught when the served one lies.

use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::support::{DUBLIN, Process, client, clover_with_passphrase, mint_token, proxy, run, run_ok, stdout_of};

fn clover(dir: &Path) -> Command {
    clover_with_passphrase(dir, "export-test")
}

/// Six adults of one class and their profiles, written through the API.
async fn population(url: &str, token: &str) {
    let client = client(DUBLIN);
    for n in 1..=6 {
        let put = client
            .put(format!("{url}/v1/subjects/u-{n}"))
            .bearer_auth(token)
            .json(&json!({"home_region": "eu", "birth_date": "1985-03-04"}));
        assert!(put.send().await.unwrap().status().is_success());
        let fields = json!({"display_name": format!("NAME-{n}"), "email": format!("MAIL-{n}@example.ie"), "country": "IE", "phone": "+353 1 234 5678"});
        let post = client
            .post(format!("{url}/v1/subjects/u-{n}/records"))
            .bearer_auth(token)
            .json(&json!({"category": "profile", "fields": fields}));
        assert_eq!(post.send().await.unwrap().status(), 201);
    }
}

/// What a boundary that lies about its register would serve: one record fewer in its first row.
fn lying_register(path: &str, body: Vec<u8>) -> Vec<u8> {
    if path != "/v1/register/transfers" {
        return body;
    }
    // The JSON form only (the CSV form passes as it is).
    let Ok(mut register) = serde_json::from_slice::<serde_json::Value>(&body) else { return body };
    let records = register["rows"][0]["records"].as_u64().unwrap();
    register["rows"][0]["records"] = json!(records - 1);
    serde_json::to_vec(&register).unwrap()
}

/// A boundary whose CSV register says one transfer more than its JSON one and its log.
fn lying_csv(path: &str, body: Vec<u8>) -> Vec<u8> {
    if path != "/v1/register/transfers" || serde_json::from_slice::<serde_json::Value>(&body).is_ok() {
        return body;
    }
    String::from_utf8(body).unwrap().replace(",profile,1,", ",profile,2,").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_lands_in_a_file_and_the_register_recomputes_from_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    run_ok({
        let mut c = clover(dir);
        c.args(["init", "--data-dir", "data"]);
        c
    });
    let vkey = stdout_of({
        let mut c = clover(dir);
        c.args(["log", "vkey", "--data-dir", "data"]);
        c
    });
    let server = Process::serve(clover(dir), &["--data-dir", "data"]);
    population(&server.url, &mint_token(clover(dir), &["--data-dir", "data"], "support")).await;
    let analyst = mint_token(clover(dir), &["--data-dir", "data"], "analytics");

    let export = |destination: &str, output: &str| {
        let mut c = clover(dir);
        c.env("CLOVER_TOKEN", &analyst).args([
            "export",
            "--url",
            &server.url,
            "--destination",
            destination,
            "--purpose",
            "analytics",
            "--category",
            "profile",
            "--output",
            output,
        ]);
        c
    };
    let done = run_ok(export("us-partners", "out.ndjson"));
    assert!(done.stderr.contains("6 records"), "{}", done.stderr);
    let text = std::fs::read_to_string(dir.join("out.ndjson")).unwrap();
    assert_eq!(text.lines().count(), 6);
    for needle in ["NAME-", "MAIL-", "u-1", "234 5678"] {
        assert!(!text.contains(needle), "{needle} left the region: {text}");
    }
    let note = std::fs::read_to_string(dir.join("out.ndjson.manifest")).unwrap();
    let note = clover_tlog::note::Note::parse(&note).unwrap();
    note.verify(&clover_tlog::note::VerifierKey::parse(vkey.trim()).unwrap()).unwrap();
    assert!(note.text.contains("\"destination\":\"us-partners\""), "{}", note.text);

    // No legal basis: refused, with the rule that refused it, and nothing written.
    let refused = run(export("sg-analytics", "sg.ndjson"));
    assert!(!refused.status.success());
    assert!(refused.stderr.contains("no-transfer-without-legal-basis"), "{}", refused.stderr);
    assert!(!dir.join("sg.ndjson").exists());

    // The register, recomputed from the verified log alone, agrees with the served one.
    let register = |url: &str| {
        let mut c = clover(dir);
        c.args(["audit", "register", "--url", url, "--vkey", vkey.trim()]);
        run(c)
    };
    let agreed = register(&server.url);
    assert!(agreed.status.success(), "{}", agreed.stderr);
    assert!(agreed.stdout.contains("us-partners"), "{}", agreed.stdout);
    assert!(agreed.stderr.contains("agrees with the log: 1 rows, 1 transfers"), "{}", agreed.stderr);
    // A boundary that serves another register than its log gives is caught.
    let lying = proxy(server.url.clone(), lying_register).await;
    let caught = register(&lying);
    assert!(!caught.status.success());
    assert!(caught.stderr.contains("differs"), "{}", caught.stderr);
    assert!(caught.stderr.contains("in the log, not served"), "{}", caught.stderr);
    // Its CSV form is checked too.
    let lying = proxy(server.url.clone(), lying_csv).await;
    let caught = register(&lying);
    assert!(!caught.status.success());
    assert!(caught.stderr.contains("the CSV form of the served register is not the log's rows"), "{}", caught.stderr);
}
