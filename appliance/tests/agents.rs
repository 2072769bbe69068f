//! Agents through a hosted `cairn serve`: the `cairn agent` CLI makes a key, signs the example
//! agents, trusts the key and deploys over TLS pinned by fingerprint; the REST API runs tasks,
//! refuses bad packages with reasons, audits denied capabilities and keeps serving.

#[path = "../../agents/tests/common/mod.rs"]
mod common;

#[path = "support/mod.rs"]
mod support;

use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use support::{Server, call};

/// Runs the CLI with its own config file (never the user's).
fn cli(config: &Path, args: &[&str]) -> (bool, String) {
    support::cli(config, &[], args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_with_the_cli_and_run_through_the_api() {
    let work = tempfile::tempdir().unwrap();
    let models = work.path().join("no-models");
    std::fs::create_dir_all(&models).unwrap();
    let server = Server::start(
        "agents",
        &work.path().join("data"),
        &["--models", models.to_str().unwrap()],
    )
    .await;
    let (url, token) = (server.url.clone(), server.token.clone());
    let c = server.client();
    let config = work.path().join("cli.toml");
    let cli = |args: &[&str]| cli(&config, args);
    let (_, system) = call(c.get(format!("{url}/api/v1/system"))).await;
    let fp = system["tls_fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_string();

    // keygen → sign → trust → deploy, all through the CLI.
    let key = work.path().join("publisher.key");
    let (ok, public) = cli(&["agent", "keygen", "--out", key.to_str().unwrap()]);
    assert!(ok, "{public}");
    let public = public.trim().to_string();
    assert_eq!(public.len(), 64);
    let (again, msg) = cli(&["agent", "keygen", "--out", key.to_str().unwrap()]);
    assert!(!again && msg.contains("refusing"), "{msg}");
    let manifest = work.path().join("manifest.toml");
    std::fs::write(
        &manifest,
        format!("name = \"echo\"\nversion = \"1.0.0\"\npublisher = \"{public}\"\n[capabilities]\nkv = true\n"),
    )
    .unwrap();
    let wasm = common::agents_dir().join("echo.wasm");
    let pkg = work.path().join("echo.cpkg");
    let (ok, out) = cli(&[
        "agent",
        "sign",
        "--key",
        key.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
        "--component",
        wasm.to_str().unwrap(),
        "--out",
        pkg.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&["agent", "inspect", pkg.to_str().unwrap()]);
    assert!(ok && out.contains("is valid"), "{out}");

    // Untrusted first: a clear refusal naming the publisher.
    let (ok, out) = cli(&[
        "agent",
        "deploy",
        "--remote",
        &url,
        "--token",
        &token,
        "--fingerprint",
        &fp,
        pkg.to_str().unwrap(),
    ]);
    assert!(
        !ok && out.contains("403") && out.contains("not trusted"),
        "{out}"
    );
    // A wrong fingerprint never reaches the API.
    let wrong = "00".repeat(32);
    let (ok, out) = cli(&[
        "agent",
        "trust",
        "--remote",
        &url,
        "--token",
        &token,
        "--fingerprint",
        &wrong,
        "--key",
        &public,
        "--name",
        "ci",
    ]);
    assert!(!ok, "{out}");
    let (ok, out) = cli(&[
        "agent",
        "trust",
        "--remote",
        &url,
        "--token",
        &token,
        "--fingerprint",
        &fp,
        "--key",
        &public,
        "--name",
        "ci",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&[
        "agent",
        "deploy",
        "--remote",
        &url,
        "--token",
        &token,
        "--fingerprint",
        &fp,
        pkg.to_str().unwrap(),
    ]);
    assert!(ok && out.contains("echo 1.0.0 installed, running"), "{out}");
    let remote = [
        "--remote",
        url.as_str(),
        "--token",
        token.as_str(),
        "--fingerprint",
        fp.as_str(),
    ];
    let with = |args: &[&str]| cli(&[&remote[..], args].concat());
    let (ok, out) = with(&["agent", "list"]);
    assert!(
        ok && out.contains("echo") && out.contains("running"),
        "{out}"
    );
    let (ok, out) = with(&["agent", "run", "echo", "from the cli"]);
    assert!(ok && out.trim() == "from the cli (task 1)", "{out}");
    let (ok, out) = with(&["agent", "runs", "--agent", "echo"]);
    assert!(ok && out.contains("succeeded"), "{out}");

    // Tasks through the API.
    let (status, run) = call(
        c.post(format!("{url}/api/v1/agents/echo/runs"))
            .json(&json!({"input": "hello"})),
    )
    .await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["output"], "hello (task 2)");
    let (status, queued) = call(
        c.post(format!("{url}/api/v1/agents/echo/runs"))
            .json(&json!({"input": "later", "wait": false})),
    )
    .await;
    assert_eq!(status, 202);
    let id = queued["id"].as_str().unwrap().to_string();
    let mut done = Value::Null;
    for _ in 0..100 {
        let (_, r) = call(c.get(format!("{url}/api/v1/runs/{id}"))).await;
        if r["status"] == "succeeded" {
            done = r;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(done["output"], "later (task 3)");
    let (_, reply) = call(
        c.post(format!("{url}/api/v1/agents/echo/messages"))
            .json(&json!({"body": "hi"})),
    )
    .await;
    assert_eq!(reply["reply"], "operator said hi");

    // Lifecycle over the API.
    let (status, v) = call(c.post(format!("{url}/api/v1/agents/echo/checkpoint"))).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = call(c.post(format!("{url}/api/v1/agents/echo/stop"))).await;
    assert_eq!((status, v["state"].as_str()), (200, Some("stopped")));
    let (status, v) = call(
        c.post(format!("{url}/api/v1/agents/echo/runs"))
            .json(&json!({"input": "x"})),
    )
    .await;
    assert_eq!(status, 409, "{v}");
    let (status, _) = call(
        c.post(format!("{url}/api/v1/agents/echo/start"))
            .json(&json!({"restart": "sometimes"})),
    )
    .await;
    assert_eq!(status, 400, "unknown restart policy");
    let (status, _) = call(
        c.post(format!("{url}/api/v1/agents/echo/start"))
            .json(&json!({})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(c.post(format!("{url}/api/v1/agents/echo/explode"))).await;
    assert_eq!(status, 404);

    // A workflow over the API: echo twice in sequence; a cycle is refused before anything runs.
    let wf = "name = \"twice\"\n[topology]\nkind = \"sequential\"\nsteps = [{ agent = \"echo\" }, { agent = \"echo\", input = \"{previous}!\" }]\n";
    let (status, v) = call(
        c.post(format!("{url}/api/v1/workflows/runs"))
            .json(&json!({"workflow": wf, "input": "w"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(v["output"], "w (task 4)! (task 5)", "{v}");
    let cyclic = "name = \"loopy\"\n[topology]\nkind = \"dag\"\nnodes = [{ id = \"x\", agent = \"echo\", after = [\"y\"] }, { id = \"y\", agent = \"echo\", after = [\"x\"] }]\n";
    let (status, v) = call(
        c.post(format!("{url}/api/v1/workflows/runs"))
            .json(&json!({"workflow": cyclic})),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("bad_workflow")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("cycle"),
        "{v}"
    );
    let (_, runs) = call(c.get(format!("{url}/api/v1/workflows/runs?workflow=twice"))).await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1);
    // A run that ended cannot be cancelled; the answer says why.
    let first = runs["runs"][0]["id"].as_str().unwrap().to_string();
    let (status, v) = call(c.post(format!("{url}/api/v1/workflows/runs/{first}/cancel"))).await;
    assert_eq!(status, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already ended (succeeded)"),
        "{v}"
    );

    // Stored definitions: saved (then replaced, versioned), listed, run by name, deleted.
    let (status, v) = call(
        c.put(format!("{url}/api/v1/workflows/twice"))
            .json(&json!({"workflow": wf})),
    )
    .await;
    assert_eq!((status, v["version"].as_u64()), (201, Some(1)), "{v}");
    let (status, v) = call(
        c.put(format!("{url}/api/v1/workflows/twice"))
            .json(&json!({"workflow": wf})),
    )
    .await;
    assert_eq!((status, v["version"].as_u64()), (200, Some(2)), "{v}");
    let (status, v) = call(
        c.put(format!("{url}/api/v1/workflows/other"))
            .json(&json!({"workflow": wf})),
    )
    .await;
    assert_eq!(status, 400, "a name that differs from the path: {v}");
    let (_, list) = call(c.get(format!("{url}/api/v1/workflows"))).await;
    assert_eq!(list["workflows"][0]["name"], "twice", "{list}");
    assert_eq!(list["workflows"].as_array().unwrap().len(), 1, "{list}");
    let (status, v) = call(
        c.post(format!("{url}/api/v1/workflows/twice/runs"))
            .json(&json!({"input": "s"})),
    )
    .await;
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("succeeded")),
        "{v}"
    );
    assert!(v["output"].as_str().unwrap().starts_with("s (task"), "{v}");
    // The same from the CLI: save from a file, list, run by name, show.
    let wf_file = work.path().join("twice.toml");
    std::fs::write(&wf_file, wf).unwrap();
    let (ok, out) = cli(&[
        "login",
        "--remote",
        &url,
        "--token",
        &token,
        "--fingerprint",
        &fp,
    ]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&["workflow", "save", wf_file.to_str().unwrap()]);
    assert!(ok && out.contains("saved twice (version 3)"), "{out}");
    let (ok, out) = cli(&["workflow", "list"]);
    assert!(ok && out.contains("twice v3 sequential [echo]"), "{out}");
    let (ok, out) = cli(&["workflow", "run", "twice", "--input", "from the cli"]);
    assert!(
        ok && out.contains("succeeded") && out.contains("from the cli (task"),
        "{out}"
    );
    let (ok, out) = cli(&["workflow", "show", "twice"]);
    assert!(ok && out == wf, "{out}");
    let (ok, out) = cli(&["workflow", "cancel", "wf-0-none"]);
    assert!(!ok && out.contains("404"), "{out}");
    let (status, _) = call(c.delete(format!("{url}/api/v1/workflows/twice"))).await;
    assert_eq!(status, 204);
    let (status, _) = call(c.post(format!("{url}/api/v1/workflows/twice/runs"))).await;
    assert_eq!(status, 404);

    // Bad packages: garbage, tampered, a component of another world.
    let (status, v) = call(
        c.post(format!("{url}/api/v1/agents"))
            .body(b"not a package".to_vec()),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("bad_package")),
        "{v}"
    );
    let mut tampered = std::fs::read(&pkg).unwrap();
    let at = tampered.len() - 500;
    tampered[at] ^= 1;
    let (status, v) = call(c.post(format!("{url}/api/v1/agents")).body(tampered)).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (403, Some("bad_signature")),
        "{v}"
    );
    let signing =
        cairn_agents::package::SigningKey::from_file_text(&std::fs::read_to_string(&key).unwrap())
            .unwrap();
    let junk = signing
        .sign(
            &format!("name = \"junk\"\nversion = \"1.0.0\"\npublisher = \"{public}\"\n"),
            b"\0asm\x01\0\0\0".to_vec(),
        )
        .unwrap()
        .to_bytes();
    let (status, v) = call(c.post(format!("{url}/api/v1/agents")).body(junk)).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (422, Some("component_mismatch")),
        "{v}"
    );

    // A hostile agent's denied egress is audited; the appliance keeps answering.
    let hostile = common::package(
        &signing,
        "hostile",
        "hostile",
        "[limits]\nwall_time_ms = 2000\n",
    );
    let (status, v) = call(c.post(format!("{url}/api/v1/agents")).body(hostile)).await;
    assert_eq!(status, 201, "{v}");
    for attack in ["egress", "trap", "loop", "bomb"] {
        let (status, run) = call(
            c.post(format!("{url}/api/v1/agents/hostile/runs"))
                .json(&json!({"input": attack})),
        )
        .await;
        assert_eq!(
            (status, run["status"].as_str()),
            (200, Some("failed")),
            "{attack}: {run}"
        );
    }
    // A run in progress is cancelled at once, long before its wall time.
    let (status, v) = call(
        c.post(format!("{url}/api/v1/agents/hostile/runs"))
            .json(&json!({"input": "loop", "wait": false})),
    )
    .await;
    assert_eq!(status, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let (status, v) = call(c.post(format!("{url}/api/v1/runs/{id}/cancel"))).await;
    assert_eq!(
        (status, v["status"].as_str(), v["error"].as_str()),
        (200, Some("killed"), Some("cancelled by an operator")),
        "{v}"
    );
    let (_, audit) = call(c.get(format!("{url}/api/v1/audit?limit=100"))).await;
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "capability_denied" && e["agent"] == "hostile"),
        "{audit}"
    );
    let (status, _) = call(c.get(format!("{url}/healthz"))).await;
    assert_eq!(status, 200);
    let (_, list) = call(c.get(format!("{url}/api/v1/agents"))).await;
    assert_eq!(list["agents"].as_array().unwrap().len(), 2);
    let (status, _) = call(c.delete(format!("{url}/api/v1/agents/hostile"))).await;
    assert_eq!(status, 204);
    let (status, _) = call(c.get(format!("{url}/api/v1/agents/hostile"))).await;
    assert_eq!(status, 404);
}
