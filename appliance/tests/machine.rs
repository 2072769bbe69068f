//! Machine settings against a hosted `cairn serve` (`docs/console.md`, "Machine settings"):
//! bad values are refused field by field with nothing written, the host name applies at once,
//! a network change stays on probation and is reverted when nobody confirms it in time (or
//! when the appliance restarts first), a confirmed change survives a restart, and only
//! administrators may change any of it.

#[path = "support/mod.rs"]
mod support;

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::{Server, call, token_client};

async fn settings(s: &Server) -> Value {
    let (st, v) = call(s.client().get(format!("{}/api/v1/system/settings", s.url))).await;
    assert_eq!(st, 200, "{v}");
    v
}

async fn put(s: &Server, body: Value) -> (u16, Value) {
    call(
        s.client()
            .put(format!("{}/api/v1/system/settings", s.url))
            .json(&body),
    )
    .await
}

fn static_net(address: &str, gateway: &str) -> Value {
    json!({"mode": "static", "address": address, "gateway": gateway, "dns": ["10.9.0.1"]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_are_validated_applied_on_probation_and_reverted_unless_confirmed() {
    let mut s = Server::start_temp("machine", &[]).await;
    let config = s.data.join("etc/cairn.toml");

    let v = settings(&s).await;
    assert_eq!(v["managed"], false, "{v}");
    assert_eq!(v["settings"]["hostname"], "cairn");
    assert_eq!(v["settings"]["network"]["mode"], "dhcp");
    assert_eq!(v["pending"], Value::Null);

    // A bad value names its field, and nothing at all is written.
    let (st, v) = put(
        &s,
        json!({"hostname": "edge-7", "network": static_net("10.9.0.5/24", "10.8.0.1")}),
    )
    .await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(v["error"]["field"], "gateway", "{v}");
    assert!(!config.exists(), "a refused change wrote the file");
    for (body, field) in [
        (json!({"hostname": "bad_name"}), "hostname"),
        (json!({"network": {"mode": "static"}}), "address"),
        (json!({"network": {"mode": "off"}}), "mode"),
        (
            json!({"network": static_net("10.9.0.5/24", ""), "confirm_within_s": 1}),
            "confirm_within_s",
        ),
    ] {
        let (st, v) = put(&s, body.clone()).await;
        assert_eq!(
            (st, v["error"]["field"].as_str()),
            (422, Some(field)),
            "{body}: {v}"
        );
    }
    let (st, v) = put(&s, json!({"hostnme": "typo"})).await;
    assert_eq!(st, 400, "{v}");
    assert!(!config.exists());

    // The host name applies at once: nothing can cut the operator off.
    let (st, v) = put(&s, json!({"hostname": "edge-7"})).await;
    assert_eq!((st, v["status"].as_str()), (200, Some("applied")), "{v}");
    assert!(std::fs::read_to_string(&config).unwrap().contains("edge-7"));

    // A network change is on probation; a second change waits for it.
    let (st, v) = put(
        &s,
        json!({"network": static_net("10.9.0.5/24", "10.9.0.1"), "confirm_within_s": 10}),
    )
    .await;
    assert_eq!((st, v["status"].as_str()), (202, Some("pending")), "{v}");
    let left = v["pending"]["remaining_s"].as_i64().unwrap();
    assert!((8..=10).contains(&left), "{v}");
    assert_eq!(v["settings"]["network"]["address"], "10.9.0.5/24");
    let (st, _) = put(&s, json!({"hostname": "edge-8"})).await;
    assert_eq!(st, 409);

    // Nobody confirms: the previous network comes back by itself; the host name stays.
    let until = Instant::now() + Duration::from_secs(40);
    let v = loop {
        let v = settings(&s).await;
        if v["pending"].is_null() {
            break v;
        }
        assert!(Instant::now() < until, "never reverted: {v}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(v["settings"]["network"]["mode"], "dhcp", "{v}");
    assert_eq!(v["settings"]["hostname"], "edge-7", "{v}");
    let (st, _) = call(
        s.client()
            .post(format!("{}/api/v1/system/settings/confirm", s.url)),
    )
    .await;
    assert_eq!(st, 409, "nothing is left to confirm");

    // Confirmed in time, the change stays, across a restart too.
    let (st, _) = put(
        &s,
        json!({"network": static_net("10.9.0.5/24", "10.9.0.1")}),
    )
    .await;
    assert_eq!(st, 202);
    // Not before it is applied (a second after the answer): nothing was tried yet.
    let (st, v) = call(
        s.client()
            .post(format!("{}/api/v1/system/settings/confirm", s.url)),
    )
    .await;
    assert_eq!(st, 409, "{v}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (st, v) = call(
        s.client()
            .post(format!("{}/api/v1/system/settings/confirm", s.url)),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["pending"], Value::Null);
    s.restart("machine-2", &[]);
    let v = settings(&s).await;
    assert_eq!(v["settings"]["network"]["address"], "10.9.0.5/24", "{v}");
    assert_eq!(v["settings"]["network"]["dns"], json!(["10.9.0.1"]));

    // A change still on probation when the appliance restarts is rolled back at start.
    let (st, _) = put(&s, json!({"network": {"mode": "dhcp"}})).await;
    assert_eq!(st, 202);
    s.restart("machine-3", &[]);
    let v = settings(&s).await;
    assert_eq!(v["pending"], Value::Null, "{v}");
    assert_eq!(v["settings"]["network"]["mode"], "static", "{v}");
    assert!(s.log().contains("never confirmed"), "no rollback logged");

    // An explicit revert.
    let (st, _) = put(&s, json!({"network": {"mode": "dhcp"}})).await;
    assert_eq!(st, 202);
    let (st, v) = call(
        s.client()
            .post(format!("{}/api/v1/system/settings/revert", s.url)),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["settings"]["network"]["mode"], "static", "{v}");

    // The clock belongs to the host when hosted; nonsense is refused by field either way.
    let (st, v) = call(
        s.client()
            .post(format!("{}/api/v1/system/clock", s.url))
            .json(&json!({"unix": 12})),
    )
    .await;
    assert_eq!(
        (st, v["error"]["field"].as_str()),
        (422, Some("time")),
        "{v}"
    );
    let (st, v) = call(
        s.client()
            .post(format!("{}/api/v1/system/clock", s.url))
            .json(&json!({"unix": 1_800_000_000})),
    )
    .await;
    assert_eq!(st, 409, "{v}");

    // Operators and readers may look, not change.
    let (st, v) = call(
        s.client()
            .post(format!("{}/api/v1/auth/tokens", s.url))
            .json(&json!({"name": "ops", "scope": "operator"})),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let ops = token_client(v["token"].as_str().unwrap());
    let (st, _) = call(ops.get(format!("{}/api/v1/system/settings", s.url))).await;
    assert_eq!(st, 200);
    let (st, _) = call(
        ops.put(format!("{}/api/v1/system/settings", s.url))
            .json(&json!({"hostname": "ops-was-here"})),
    )
    .await;
    assert_eq!(st, 403);
    let (st, _) = call(ops.post(format!("{}/api/v1/system/settings/revert", s.url))).await;
    assert_eq!(st, 403);
    assert_eq!(settings(&s).await["settings"]["hostname"], "edge-7");
}
