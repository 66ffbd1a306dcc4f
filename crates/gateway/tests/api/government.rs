//! The transparency report on government requests, computed from the log alone.

use clover_event::{EVENT_VERSION, Event, EventKind, GovernmentRequestFacts};
use serde_json::{Value, json};

use crate::harness::{TestApp, UNKNOWN, problem};

fn entry(id: &str, stage: &str, time: i64, facts: impl FnOnce(&mut GovernmentRequestFacts)) -> Event {
    let mut request = GovernmentRequestFacts {
        request_id: id.into(),
        stage: stage.into(),
        country: None,
        instrument: None,
        count: 0,
        categories: Vec::new(),
        deadline: None,
        outcome: None,
        sealed: None,
        gag_until: None,
    };
    facts(&mut request);
    Event {
        v: EVENT_VERSION,
        kind: EventKind::GovernmentRequest,
        time,
        principal: None,
        origin: None,
        action: Some("government-request".into()),
        subject: None,
        category: None,
        decision: None,
        purpose: None,
        annex: None,
        detail: None,
        transfer: None,
        government_request: Some(Box::new(request)),
    }
}

#[tokio::test]
async fn the_report_is_computed_from_the_log_and_a_zero_is_a_fact() {
    let app = TestApp::start().await;
    let get = |query: &'static str, csv: bool| {
        let app = &app;
        async move {
            let mut request = app.client(UNKNOWN).get(app.url(&format!("/v1/reports/government-requests{query}")));
            if csv {
                request = request.header("Accept", "text/csv");
            }
            request.send().await.unwrap()
        }
    };
    // Nothing received: an empty report anyone can fetch (no token), over the whole log.
    let empty: Value = get("?period=2026-H2", false).await.json().await.unwrap();
    assert_eq!(empty["rows"], json!([]));
    assert_eq!(empty["gagged"], 0);
    assert!(empty["entries"].as_u64().unwrap() >= 1);

    // Requests received in 2026-H2, one decided and disclosed, one gagged, one in H1.
    let july = 1_782_864_000 + 3_600;
    for event in [
        entry("gr-1", "received", july, |f| {
            f.country = Some("de".into());
            f.instrument = Some("production-order".into());
            f.count = 2;
            f.deadline = Some(july + 864_000);
        }),
        entry("gr-1", "decided", july + 7_200, |f| f.outcome = Some("granted".into())),
        entry("gr-1", "disclosed", july + 7_300, |f| f.count = 5),
        entry("gr-2", "received", july, |f| {
            f.sealed = Some("00".repeat(32));
            f.gag_until = Some(july + 86_400 * 90);
        }),
        entry("gr-3", "received", july - 86_400 * 60, |f| {
            f.country = Some("fr".into());
            f.instrument = Some("emergency".into());
            f.count = 1;
        }),
    ] {
        app.boundary.log().append(&event).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let report: Value = get("?period=2026-H2", false).await.json().await.unwrap();
    assert_eq!(report["rows"].as_array().unwrap().len(), 1, "{report}");
    let row = &report["rows"][0];
    assert_eq!((row["country"].as_str(), row["instrument"].as_str()), (Some("de"), Some("production-order")));
    assert_eq!(
        (row["requests"].as_u64(), row["accounts"].as_u64(), row["disclosed"].as_u64()),
        (Some(1), Some(2), Some(1))
    );
    assert_eq!(row["disclosed_percent"], 100);
    assert_eq!(row["deadlines_met"], 1);
    assert_eq!(row["median_hours_to_answer"], 2);
    assert_eq!(report["gagged"], 1);
    let h1: Value = get("?period=2026-H1", false).await.json().await.unwrap();
    assert_eq!(h1["rows"][0]["country"], "fr");
    assert_eq!(h1["emergency"], 1);
    let csv = get("?period=2026-H2", true).await.text().await.unwrap();
    assert!(csv.contains("2026-H2,de,production-order,1,2,1,100,0,1,0,2\n"), "{csv}");
    assert!(csv.ends_with("2026-H2,gagged,gagged,1,,,,,,,\n"), "{csv}");

    for bad in ["?period=2026-H3", "?period=26-H1", "", "?period=2026-H1&x=1"] {
        problem(get(bad, false).await, 400, "invalid-query").await;
    }
}
