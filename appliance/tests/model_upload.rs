//! Models on a running box (`docs/inference.md`, "Models on a running box"): a GGUF chat model
//! uploaded through the API with its SHA-256 answers `/v1/chat/completions` at once, stays
//! registered across a restart, unloads, and is deleted with its file; a missing or wrong
//! hash, a file that is not a model, a taken id and a non-admin caller are refused and leave
//! nothing behind.

#[path = "support/mod.rs"]
mod support;

use cairn_models::catalog::Catalog;
use cairn_models::store::{ModelStore, default_dir};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::{Server, call, token_client};

const CHAT: &str = "smollm2-135m-instruct-q4_1";

fn upload(
    c: &reqwest::Client,
    url: &str,
    id: &str,
    body: Vec<u8>,
    sha: Option<&str>,
) -> reqwest::RequestBuilder {
    let mut rb = c.put(format!("{url}/api/v1/models/{id}")).body(body);
    if let Some(sha) = sha {
        rb = rb.header("x-cairn-sha256", sha);
    }
    rb
}

async fn listed(c: &reqwest::Client, url: &str, id: &str) -> Option<Value> {
    let (st, v) = call(c.get(format!("{url}/api/v1/models"))).await;
    assert_eq!(st, 200, "{v}");
    v["models"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["id"] == id).cloned())
}

async fn chat(c: &reqwest::Client, url: &str, model: &str) -> (u16, Value) {
    call(c.post(format!("{url}/v1/chat/completions")).json(&json!({
        "model": model, "max_tokens": 4, "temperature": 0,
        "messages": [{"role": "user", "content": "Say hello."}]
    })))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the default models; run with cargo xtask test"]
async fn a_model_uploaded_on_a_running_box_answers_chat_without_a_restart() {
    let store = ModelStore::new(default_dir());
    let entry = Catalog::builtin().get(CHAT).expect("catalog entry").clone();
    let file = store.file(&entry, "weights").unwrap_or_else(|| {
        panic!(
            "run `cargo xtask fetch-models` first ({})",
            store.root().display()
        )
    });
    let model = std::fs::read(&file).unwrap();
    let sha = hex::encode(Sha256::digest(&model));
    let work = tempfile::tempdir().unwrap();
    let empty = work.path().join("no-models");
    std::fs::create_dir_all(&empty).unwrap();
    let args = [
        "--models",
        empty.to_str().unwrap(),
        "--threads",
        "2",
        "--device",
        "cpu",
    ];
    let mut s = Server::start("upload", &work.path().join("data"), &args).await;
    let (c, url) = (s.client(), s.url.clone());
    let uploads = s.data.join("models");
    let leftovers = || {
        std::fs::read_dir(&uploads)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_else(|_| Vec::<String>::new())
    };

    // Refusals: each names the problem and leaves nothing behind.
    let (st, v) = call(upload(&c, &url, "mine", model.clone(), None)).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("missing_sha256")),
        "{v}"
    );
    let wrong = "0".repeat(64);
    let (st, v) = call(upload(&c, &url, "mine", model.clone(), Some(&wrong))).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("sha256_mismatch")),
        "{v}"
    );
    let junk = b"GGUF but not really a model".to_vec();
    let junk_sha = hex::encode(Sha256::digest(&junk));
    let (st, v) = call(upload(&c, &url, "mine", junk, Some(&junk_sha))).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("bad_model")),
        "{v}"
    );
    let (st, v) = call(upload(&c, &url, "../etc", model.clone(), Some(&sha))).await;
    assert!(st == 400 || st == 404, "{st} {v}");
    let (st, reader) = call(
        c.post(format!("{url}/api/v1/auth/tokens"))
            .json(&json!({"name": "watcher", "scope": "operator"})),
    )
    .await;
    assert_eq!(st, 201, "{reader}");
    let operator = token_client(reader["token"].as_str().unwrap());
    let (st, _) = call(upload(&operator, &url, "mine", model.clone(), Some(&sha))).await;
    assert_eq!(st, 403, "an operator may not add models");
    assert!(listed(&c, &url, "mine").await.is_none());
    assert!(leftovers().is_empty(), "left behind: {:?}", leftovers());

    // The upload with the CLI (it hashes and streams the file), then chat through the
    // OpenAI-compatible path, no restart.
    let (_, system) = call(c.get(format!("{url}/api/v1/system"))).await;
    let fp = system["tls_fingerprint"].as_str().unwrap().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .env("CAIRN_CONFIG", work.path().join("cli.toml"))
        .env_remove("CAIRN_TOKEN")
        .env_remove("CAIRN_REMOTE")
        .args(["models", "add", "--id", "mine", file.to_str().unwrap()])
        .args(["--remote", &url, "--token", &s.token, "--fingerprint", &fp])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("model mine added"),
        "{text}"
    );
    assert!(
        text.contains(&sha),
        "the CLI did not send the file's hash: {text}"
    );
    assert_eq!(leftovers(), ["mine.gguf"]);
    let m = listed(&c, &url, "mine").await.expect("listed");
    assert_eq!(
        (m["kind"].as_str(), m["loaded"].as_bool()),
        (Some("chat"), Some(false)),
        "{m}"
    );
    let (st, v) = chat(&c, &url, "mine").await;
    assert_eq!(st, 200, "{v}");
    assert!(
        !v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{v}"
    );
    let (st, v) = call(upload(&c, &url, "mine", model.clone(), Some(&sha))).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("model_exists")),
        "{v}"
    );
    let (st, v) = call(c.post(format!("{url}/api/v1/models/mine/unload"))).await;
    assert_eq!((st, v["unloaded"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(listed(&c, &url, "mine").await.unwrap()["loaded"], false);
    // Removed at once, and the id is free again.
    let (st, v) = call(c.delete(format!("{url}/api/v1/models/mine"))).await;
    assert_eq!(st, 204, "{v}");
    assert!(listed(&c, &url, "mine").await.is_none());
    let (st, v) = call(upload(&c, &url, "mine", model.clone(), Some(&sha))).await;
    assert_eq!(st, 201, "{v}");

    // Still there after a restart (and an upload a crash interrupted is cleaned up); deleted
    // with its file.
    std::fs::write(uploads.join(".upload-cut"), b"half a model").unwrap();
    s.restart("upload-again", &args);
    let c = s.client();
    assert!(
        listed(&c, &url, "mine").await.is_some(),
        "the upload did not survive a restart"
    );
    let (st, _) = call(c.delete(format!("{url}/api/v1/models/mine"))).await;
    assert_eq!(st, 204);
    assert!(listed(&c, &url, "mine").await.is_none());
    assert!(leftovers().is_empty(), "left behind: {:?}", leftovers());
    let (st, v) = chat(&c, &url, "mine").await;
    assert!(
        (400..500).contains(&st),
        "chat with a deleted model: {st} {v}"
    );
    let (st, v) = call(c.delete(format!("{url}/api/v1/models/mine"))).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("unknown_model")),
        "{v}"
    );
}
