//! Whole-box backup and restore through hosted `cairn serve` instances: box A gets an agent
//! with state, memory records, a setting, a remote provider with a key and a second token; the
//! `cairn backup create` CLI downloads its backup; a freshly started box B refuses a wrong
//! passphrase, a truncated, a tampered and a foreign file and stays as it was, then restores
//! through `cairn backup restore --setup-code` instead of onboarding and comes back as A: the
//! same agent state, the same recall results, the same tokens, the provider's key usable.

#[path = "../../agents/tests/common/mod.rs"]
mod common;

#[path = "support/mod.rs"]
mod support;

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};
use support::{Server, anonymous, call, token_client};

/// A bad restore: what it is, the body, passphrase and setup code sent, the status and error
/// code expected.
type Refusal<'a> = (&'a str, Vec<u8>, &'a str, &'a str, u16, &'a str);

const PASSPHRASE: &str = "a long and unguessable passphrase";
const PROVIDER_KEY: &str = "sk-only-in-the-backup";

/// The CLI with its own config file and the backup passphrase in the environment.
fn cli(config: &Path, args: &[&str]) -> (bool, String) {
    support::cli(config, &[("CAIRN_BACKUP_PASSPHRASE", PASSPHRASE)], args)
}

/// An OpenAI-compatible provider that answers only callers with [`PROVIDER_KEY`].
async fn fake_provider() -> String {
    async fn chat(headers: HeaderMap) -> axum::response::Response {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if auth != format!("Bearer {PROVIDER_KEY}") {
            return (StatusCode::UNAUTHORIZED, "bad key").into_response();
        }
        axum::Json(json!({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "keyed"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}))
        .into_response()
    }
    let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(chat));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    base
}

async fn recall(c: &reqwest::Client, url: &str) -> Vec<(String, String)> {
    let (st, v) = call(
        c.post(format!("{url}/api/v1/memory/recall"))
            .json(&json!({"namespaces": ["shared"], "query": "quartz valve", "k": 5})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|h| {
            (
                h["record"]["id"].to_string(),
                h["record"]["text"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

async fn run_echo(c: &reqwest::Client, url: &str, input: &str) -> String {
    let (st, run) = call(
        c.post(format!("{url}/api/v1/agents/echo/runs"))
            .json(&json!({"input": input})),
    )
    .await;
    assert_eq!(st, 200, "{run}");
    run["output"].as_str().unwrap_or_default().to_string()
}

async fn provider_answer(c: &reqwest::Client, url: &str) -> (u16, Value) {
    call(
        c.post(format!("{url}/v1/chat/completions"))
            .json(&json!({"model": "far/m", "max_tokens": 5,
                    "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await
}

/// Waits until `url` answers `/healthz` from a process that started after `since` was seen.
async fn wait_back(server: &Server, restarts_before: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let restarted = server.log().matches("listening on").count() > restarts_before;
        if restarted
            && let Ok(r) = anonymous()
                .get(format!("{}/healthz", server.url))
                .send()
                .await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the box did not come back:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_one_box_restores_onto_a_fresh_one() {
    let work = tempfile::tempdir().unwrap();
    let models = work.path().join("no-models");
    std::fs::create_dir_all(&models).unwrap();
    let args = ["--models", models.to_str().unwrap()];
    let provider = fake_provider().await;

    // Box A, lived in.
    let a = Server::start("backup-a", &work.path().join("a"), &args).await;
    let c = a.client();
    let url = a.url.clone();
    let key = common::key();
    let (st, v) = call(
        c.post(format!("{url}/api/v1/trust"))
            .json(&json!({"key": key.public_hex(), "name": "ci"})),
    )
    .await;
    assert!(st == 200 || st == 201, "{st} {v}");
    let pkg = common::package(&key, "echo", "echo", "[capabilities]\nkv = true\n");
    let (st, v) = call(c.post(format!("{url}/api/v1/agents")).body(pkg)).await;
    assert!(st == 200 || st == 201, "{st} {v}");
    assert_eq!(run_echo(&c, &url, "one").await, "one (task 1)");
    // The task counter lives in the instance; a checkpoint makes it part of the box's data.
    let (st, v) = call(c.post(format!("{url}/api/v1/agents/echo/checkpoint"))).await;
    assert_eq!(st, 200, "{v}");
    for text in [
        "the quartz valve on pump 3 was replaced in March",
        "pump 3 runs hot after noon",
        "the quartz valve supplier is in Lyon",
    ] {
        let (st, v) = call(
            c.post(format!("{url}/api/v1/memory/records"))
                .json(&json!({"namespace": "shared", "text": text, "tier": "semantic"})),
        )
        .await;
        assert!(st == 200 || st == 201, "{st} {v}");
    }
    let remembered = recall(&c, &url).await;
    assert!(remembered.len() >= 2, "{remembered:?}");
    let (st, _) = call(
        c.put(format!("{url}/api/v1/settings/site-name"))
            .json(&json!("north pumping station")),
    )
    .await;
    assert_eq!(st, 200);
    let (st, v) = call(
        c.post(format!("{url}/api/v1/router/providers"))
            .json(&json!({
                "name": "far", "kind": "openai", "base_url": provider, "key": PROVIDER_KEY,
                "models": [{"id": "m", "input_per_1k_usd": 0.001, "output_per_1k_usd": 0.001}]
            })),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = call(
        c.put(format!("{url}/api/v1/router/settings"))
            .json(&json!({"policy": "cheapest"})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = provider_answer(&c, &url).await;
    assert_eq!(st, 200, "{v}");
    let (st, reader) = call(
        c.post(format!("{url}/api/v1/auth/tokens"))
            .json(&json!({"name": "dashboard", "scope": "reader"})),
    )
    .await;
    assert_eq!(st, 201, "{reader}");
    let reader = reader["token"].as_str().unwrap().to_string();

    // Its backup, through the CLI; a short passphrase is refused.
    let (st, v) = call(
        c.post(format!("{url}/api/v1/backup"))
            .json(&json!({"passphrase": "short"})),
    )
    .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("bad_passphrase"))
    );
    let (st, _) = call(
        token_client(&reader)
            .post(format!("{url}/api/v1/backup"))
            .json(&json!({"passphrase": PASSPHRASE})),
    )
    .await;
    assert_eq!(st, 403, "a reader may not take the box's secrets");
    let (_, system) = call(c.get(format!("{url}/api/v1/system"))).await;
    let fp_a = system["tls_fingerprint"].as_str().unwrap().to_string();
    let config = work.path().join("cli.toml");
    let file = work.path().join("a.tar.age");
    let (ok, out) = cli(
        &config,
        &[
            "backup",
            "create",
            "--out",
            file.to_str().unwrap(),
            "--remote",
            &url,
            "--token",
            &a.token,
            "--fingerprint",
            &fp_a,
        ],
    );
    assert!(ok, "{out}");
    let archive = std::fs::read(&file).unwrap();
    assert!(
        archive.starts_with(b"age-encryption.org/v1\n"),
        "not an age file"
    );
    assert!(
        !archive
            .windows(PROVIDER_KEY.len())
            .any(|w| w == PROVIDER_KEY.as_bytes()),
        "the provider key is in the clear"
    );

    // Box B, freshly started: bad archives are refused and change nothing.
    let b = Server::spawn("backup-b", &work.path().join("b"), &args);
    let code = b.setup_code().expect("a fresh box prints its setup code");
    let restore = |body: Vec<u8>, passphrase: &str, code: &str| {
        anonymous()
            .post(format!("{}/api/v1/backup/restore", b.url))
            .header("x-cairn-passphrase", passphrase.to_string())
            .header("x-cairn-setup-code", code.to_string())
            .body(body)
    };
    let mut tampered = archive.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0x40;
    let cases: [Refusal; 5] = [
        (
            "wrong setup code",
            archive.clone(),
            PASSPHRASE,
            "AAAA-BBBB-CCCC",
            403,
            "bad_code",
        ),
        (
            "wrong passphrase",
            archive.clone(),
            "not the passphrase",
            &code,
            400,
            "wrong_passphrase",
        ),
        (
            "truncated",
            archive[..archive.len() * 2 / 3].to_vec(),
            PASSPHRASE,
            &code,
            400,
            "damaged_backup",
        ),
        (
            "tampered",
            tampered,
            PASSPHRASE,
            &code,
            400,
            "damaged_backup",
        ),
        (
            "not a backup",
            b"PK\x03\x04 a zip file".to_vec(),
            PASSPHRASE,
            &code,
            400,
            "not_a_backup",
        ),
    ];
    for (what, body, passphrase, code, status, error) in cases {
        let (st, v) = call(restore(body, passphrase, code)).await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (status, Some(error)),
            "{what}: {v}"
        );
        assert!(
            !b.data.join("restore.staged").exists(),
            "{what}: a refused restore left its staging behind"
        );
    }
    let (_, state) = call(anonymous().get(format!("{}/api/v1/auth/state", b.url))).await;
    assert_eq!(state["onboarded"], false, "B changed: {state}");
    let (st, _) = call(token_client(&a.token).get(format!("{}/api/v1/system", b.url))).await;
    assert_eq!(st, 401, "A's token works on B before the restore");

    // The restore, instead of onboarding (the CLI pins B's certificate on first contact).
    let starts = b.log().matches("listening on").count();
    let args_restore = [
        "backup",
        "restore",
        file.to_str().unwrap(),
        "--setup-code",
        &code,
        "--remote",
        &b.url,
    ];
    let (ok, out) = cli(&work.path().join("cli-b.toml"), &args_restore);
    assert!(ok && out.contains("the appliance is back"), "{out}");
    wait_back(&b, starts).await;
    assert!(b.log().contains("restored the backup"), "{}", b.log());

    // B is A now: tokens, agent state, memory, settings, the provider key.
    let cb = token_client(&a.token);
    let (st, state) = call(anonymous().get(format!("{}/api/v1/auth/state", b.url))).await;
    assert_eq!((st, &state["onboarded"]), (200, &json!(true)), "{state}");
    let (st, _) = call(token_client(&reader).get(format!("{}/api/v1/memory", b.url))).await;
    assert_eq!(st, 200, "the reader token of A does not work on B");
    assert_eq!(run_echo(&cb, &b.url, "two").await, "two (task 2)");
    assert_eq!(recall(&cb, &b.url).await, remembered);
    let (st, v) = call(cb.get(format!("{}/api/v1/settings/site-name", b.url))).await;
    assert_eq!(st, 200, "{v}");
    assert!(v.to_string().contains("north pumping station"), "{v}");
    let (st, v) = provider_answer(&cb, &b.url).await;
    assert_eq!(st, 200, "the provider key did not survive: {v}");
    // New writes on the restored box work (memory starts a fresh journal).
    let (st, v) =
        call(cb.post(format!("{}/api/v1/memory/records", b.url)).json(
            &json!({"namespace": "shared", "text": "restored onto box B", "tier": "semantic"}),
        ))
        .await;
    assert!(st == 200 || st == 201, "{st} {v}");

    // An onboarded box takes a restore from its admin only, and comes back again.
    let (st, _) = call(
        token_client(&reader)
            .post(format!("{}/api/v1/backup/restore", b.url))
            .header("x-cairn-passphrase", PASSPHRASE)
            .body(archive.clone()),
    )
    .await;
    assert_eq!(st, 403);
    let starts = b.log().matches("listening on").count();
    let (st, v) = call(
        cb.post(format!("{}/api/v1/backup/restore", b.url))
            .header("x-cairn-passphrase", PASSPHRASE)
            .body(archive),
    )
    .await;
    assert_eq!(st, 202, "{v}");
    assert_eq!(v["backup"]["hostname"], system_hostname(&a).await);
    wait_back(&b, starts).await;
    // Back to A's state: the record written on B after the first restore is gone.
    assert_eq!(recall(&cb, &b.url).await, remembered);
    assert_eq!(run_echo(&cb, &b.url, "three").await, "three (task 2)");
}

async fn system_hostname(s: &Server) -> Value {
    let (_, v) = call(s.client().get(format!("{}/api/v1/system", s.url))).await;
    v["hostname"].clone()
}
