//! Egress, trust and quota hardening against real components: agents never reach loopback,
//! link-local or private addresses; IP literals and plain http need the manifest's opt-in; a
//! revoked publisher's agents neither start nor run; a name stays with its publisher; no
//! downgrade without force; kv and `/data` have byte quotas.

mod common;

use cairn_agents::AgentError;
use cairn_agents::db::{AgentState, RunStatus};
use cairn_agents::package::{PackageError, SigningKey};
use common::*;

/// A signed package with an explicit version.
fn versioned(key: &SigningKey, example: &str, name: &str, version: &str, extra: &str) -> Vec<u8> {
    let manifest = format!(
        "name = \"{name}\"\nversion = \"{version}\"\npublisher = \"{}\"\n{extra}",
        key.public_hex()
    );
    key.sign(&manifest, component(example)).unwrap().to_bytes()
}

/// The error a manifest with `extra` gets. `cairn agent sign` and the runtime's install read a
/// manifest with the same strict parser, so a manifest that cannot be signed cannot be installed
/// either (an unsigned package is refused before its manifest is read).
fn refused_manifest(key: &SigningKey, extra: &str) -> String {
    let manifest = format!(
        "name = \"hostile\"\nversion = \"1.0.0\"\npublisher = \"{}\"\n{extra}",
        key.public_hex()
    );
    match key.sign(&manifest, component("hostile")) {
        Ok(_) => panic!("the manifest was accepted: {extra}"),
        Err(e) => e.to_string(),
    }
}

const PRIVATE_URLS: [&str; 7] = [
    "https://127.0.0.1/",
    "https://169.254.169.254/latest/meta-data/",
    "https://2130706433/",
    "https://0x7f.1/",
    "https://0177.0.0.1/",
    "https://[::1]/",
    "https://[::ffff:127.0.0.1]/",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_never_reaches_loopback_link_local_or_private_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let services = FakeServices::new();
    let rt = runtime(dir.path(), services.clone()).await;
    let key = key();
    rt.trust(&key.public_hex(), "tests").unwrap();

    // Non-public addresses cannot even be put on the allow-list, in any notation, with or
    // without the IP-literal opt-in.
    for (optin, host) in [
        ("", "127.0.0.1"),
        ("", "169.254.169.254"),
        ("", "2130706433"),
        ("http_ip_literals = true\n", "127.0.0.1"),
        ("http_ip_literals = true\n", "169.254.169.254"),
        ("http_ip_literals = true\n", "2130706433"),
        ("http_ip_literals = true\n", "[::1]"),
        ("http_ip_literals = true\n", "10.0.0.1:8080"),
    ] {
        let caps = format!("[capabilities]\n{optin}http = [\"{host}\"]\n");
        let e = refused_manifest(&key, &caps);
        assert!(
            e.to_string().contains("capabilities.http"),
            "{optin}{host}: {e}"
        );
    }

    // With every opt-in, a URL naming a non-public address is still a refused capability
    // and nothing reaches the network.
    rt.install(
        package(
            &key,
            "hostile",
            "hostile",
            "[capabilities]\nhttp_ip_literals = true\nhttp_plaintext = true\n\
             http = [\"1.1.1.1\", \"example.com\"]\n",
        ),
        true,
    )
    .await
    .unwrap();
    for url in PRIVATE_URLS {
        let run = rt
            .run("hostile", format!("fetch:{url}"), None)
            .await
            .unwrap();
        assert_eq!(run.status, RunStatus::Failed, "{url}");
        let err = run.error.unwrap_or_default().to_lowercase();
        assert!(
            err.contains("capability") && err.contains("not a public address"),
            "{url}: {err}"
        );
    }
    assert!(
        services.seen.lock().unwrap().http.is_empty(),
        "no request left the box"
    );
    // A public literal on the allow-list goes through, in any notation.
    for url in ["https://1.1.1.1/", "https://16843009/"] {
        let run = rt
            .run("hostile", format!("fetch:{url}"), None)
            .await
            .unwrap();
        assert_eq!(run.status, RunStatus::Succeeded, "{url}: {run:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_literals_and_plain_http_need_the_manifest_opt_in() {
    let dir = tempfile::tempdir().unwrap();
    let services = FakeServices::new();
    let rt = runtime(dir.path(), services.clone()).await;
    let key = key();
    rt.trust(&key.public_hex(), "tests").unwrap();

    let e = refused_manifest(&key, "[capabilities]\nhttp = [\"1.1.1.1\"]\n");
    assert!(e.contains("http_ip_literals"), "{e}");

    rt.install(
        package(
            &key,
            "hostile",
            "hostile",
            "[capabilities]\nhttp = [\"example.com\"]\n",
        ),
        true,
    )
    .await
    .unwrap();
    // A public literal without the opt-in, and plain http without its opt-in, are refused.
    for (url, why) in [
        ("https://1.1.1.1/", "http_ip_literals"),
        ("http://example.com/", "http_plaintext"),
    ] {
        let run = rt
            .run("hostile", format!("fetch:{url}"), None)
            .await
            .unwrap();
        let err = run.error.unwrap_or_default().to_lowercase();
        assert!(
            err.contains("capability") && err.contains(&why.to_lowercase()),
            "{url}: {err}"
        );
    }
    assert!(services.seen.lock().unwrap().http.is_empty());
    let run = rt
        .run("hostile", "fetch:https://example.com/".into(), None)
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_publishers_agent_cannot_start_or_run() {
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    {
        let rt = runtime(dir.path(), FakeServices::new()).await;
        rt.trust(&key.public_hex(), "tests").unwrap();
        rt.install(package(&key, "echo", "echo", ""), true)
            .await
            .unwrap();
        rt.revoke(&key.public_hex()).await.unwrap();
        let info = rt.info("echo").unwrap();
        assert_eq!(info.record.state, AgentState::Stopped);
        assert!(
            info.record.reason.unwrap_or_default().contains("revoked"),
            "the agent says why it stopped"
        );
        // An operator cannot start it again.
        let e = rt.start("echo", Default::default()).unwrap_err();
        assert!(
            matches!(e, AgentError::Package(PackageError::Revoked(_))),
            "{e}"
        );
        assert_eq!(rt.info("echo").unwrap().record.state, AgentState::Stopped);
        // Trusting the key again does not lift the revocation.
        rt.trust(&key.public_hex(), "tests again").unwrap();
        assert!(rt.start("echo", Default::default()).is_err());
    }

    // An agent left running when its publisher was revoked behind the runtime's back (say,
    // the trust table restored from a backup) is stopped at load and refuses runs.
    let other = common::key();
    {
        let rt = runtime(dir.path(), FakeServices::new()).await;
        rt.trust(&other.public_hex(), "other").unwrap();
        rt.install(package(&other, "echo", "parrot-echo", ""), true)
            .await
            .unwrap();
    }
    {
        let db =
            std::sync::Arc::new(redb::Database::create(dir.path().join("cairn.redb")).unwrap());
        let db = cairn_agents::db::Db::open(db).unwrap();
        let mut t = db.trust(&other.public_hex()).unwrap().unwrap();
        t.revoked_ms = Some(1);
        db.put_trust(&t).unwrap();
    }
    let rt = runtime(dir.path(), FakeServices::new()).await;
    let info = rt.info("parrot-echo").unwrap();
    assert_eq!(info.record.state, AgentState::Stopped);
    assert!(info.record.reason.unwrap_or_default().contains("revoked"));
    let e = rt
        .run("parrot-echo", "hello".into(), None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("revoked"), "{e}");
    let refused = rt.runs(Some("parrot-echo"), 1).unwrap().remove(0);
    assert_eq!(refused.status, RunStatus::Refused);
    assert!(refused.error.unwrap_or_default().contains("revoked"));
    assert!(rt.start("parrot-echo", Default::default()).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_publisher_cannot_replace_an_agent() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), FakeServices::new()).await;
    let (a, b) = (key(), key());
    rt.trust(&a.public_hex(), "alice").unwrap();
    rt.trust(&b.public_hex(), "bob").unwrap();
    rt.install(
        versioned(&a, "echo", "echo", "1.0.0", "[capabilities]\nkv = true\n"),
        true,
    )
    .await
    .unwrap();
    rt.run("echo", "kv:secret".into(), None).await.unwrap();

    // Bob's echo, even a higher version, even with force, does not replace Alice's.
    let bobs = versioned(&b, "echo", "echo", "9.0.0", "[capabilities]\nkv = true\n");
    for force in [false, true] {
        let e = rt
            .install_with(bobs.clone(), true, force)
            .await
            .unwrap_err();
        assert!(matches!(e, AgentError::Conflict(_)), "{e}");
        let m = e.to_string();
        assert!(m.contains("alice") && m.contains("Uninstall"), "{m}");
    }
    assert_eq!(rt.info("echo").unwrap().record.publisher, a.public_hex());

    // After an uninstall Bob may install it, and inherits none of Alice's store.
    rt.uninstall("echo").await.unwrap();
    rt.install(bobs, true).await.unwrap();
    let run = rt.run("echo", "kv:secret".into(), None).await.unwrap();
    assert_eq!(run.output.as_deref(), Some("secret seen before: false"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downgrades_need_force() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), FakeServices::new()).await;
    let key = key();
    rt.trust(&key.public_hex(), "tests").unwrap();
    let v2 = versioned(&key, "echo", "echo", "2.0.0", "");
    rt.install(v2.clone(), true).await.unwrap();

    let v1 = versioned(&key, "echo", "echo", "1.9.9", "");
    let e = rt.install(v1.clone(), true).await.unwrap_err();
    assert!(matches!(e, AgentError::Conflict(_)), "{e}");
    assert!(e.to_string().contains("force"), "{e}");
    assert_eq!(rt.info("echo").unwrap().record.version, "2.0.0");

    // The same version again is a reinstall, also with other contents; upgrades need nothing.
    let other = versioned(&key, "echo", "echo", "2.0.0", "description = \"changed\"\n");
    rt.install(v2, true).await.unwrap();
    rt.install(other, true).await.unwrap();
    assert_eq!(rt.info("echo").unwrap().manifest.description, "changed");
    rt.install(versioned(&key, "echo", "echo", "2.0.10", ""), true)
        .await
        .unwrap();
    let e = rt.install(v1.clone(), true).await.unwrap_err();
    assert!(e.to_string().contains("2.0.10"), "{e}");

    // An administrator's force accepts the downgrade.
    rt.install_with(v1, true, true).await.unwrap();
    assert_eq!(rt.info("echo").unwrap().record.version, "1.9.9");
    assert!(
        rt.audit(20)
            .unwrap()
            .iter()
            .any(|a| a.event == "install" && a.detail.contains("forced"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_quota_refuses_writes_past_it_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let redb = std::sync::Arc::new(redb::Database::create(dir.path().join("cairn.redb")).unwrap());
    let config = cairn_agents::RuntimeConfig::new(dir.path().to_path_buf());
    let rt = cairn_agents::Runtime::open(redb.clone(), FakeServices::new(), config)
        .await
        .unwrap();
    let key = key();
    rt.trust(&key.public_hex(), "tests").unwrap();
    // "alpha" + its 1-byte value is 6 bytes; a second key would make 12.
    rt.install(
        package(
            &key,
            "echo",
            "echo",
            "[capabilities]\nkv = true\n[limits]\nkv_bytes = 10\n",
        ),
        true,
    )
    .await
    .unwrap();
    let ok = rt.run("echo", "kv:alpha".into(), None).await.unwrap();
    assert_eq!(ok.status, RunStatus::Succeeded, "{ok:?}");
    // Rewriting a key within the quota is fine.
    let again = rt.run("echo", "kv:alpha".into(), None).await.unwrap();
    assert_eq!(again.output.as_deref(), Some("alpha seen before: true"));
    let over = rt.run("echo", "kv:bravo".into(), None).await.unwrap();
    assert_eq!(over.status, RunStatus::Failed);
    let err = over.error.unwrap_or_default();
    assert!(err.contains("quota") && err.contains("kv_bytes"), "{err}");
    // Nothing of the refused write was stored.
    let db = cairn_agents::db::Db::open(redb).unwrap();
    assert_eq!(db.kv_get("echo", "bravo").unwrap(), None);
    assert_eq!(db.kv_bytes("echo").unwrap(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_quota_refuses_writes_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), FakeServices::new()).await;
    let key = key();
    rt.trust(&key.public_hex(), "tests").unwrap();
    rt.install(
        package(
            &key,
            "hostile",
            "hostile",
            "[capabilities]\nfiles = true\n[limits]\nfiles_bytes = 200000\n",
        ),
        true,
    )
    .await
    .unwrap();
    let ok = rt
        .run("hostile", "file:a:120000".into(), None)
        .await
        .unwrap();
    assert_eq!(ok.output.as_deref(), Some("wrote 120000"), "{ok:?}");
    // Rewriting the same file (truncated first) stays within the quota.
    let again = rt
        .run("hostile", "file:a:120000".into(), None)
        .await
        .unwrap();
    assert_eq!(again.output.as_deref(), Some("wrote 120000"), "{again:?}");
    let over = rt
        .run("hostile", "file:b:120000".into(), None)
        .await
        .unwrap();
    assert_eq!(over.status, RunStatus::Failed, "{over:?}");
    let err = over.error.unwrap_or_default();
    // The guest's std reports the refused stream write as an I/O error (see docs/agents.md).
    assert!(err.contains("write failed"), "{err}");
    let files = dir.path().join("agents").join("files").join("hostile");
    let total: u64 = std::fs::read_dir(&files)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(total <= 200_000, "{total} bytes on disk");
    assert_eq!(
        std::fs::metadata(files.join("a")).unwrap().len(),
        120_000,
        "the file written before is intact"
    );
}
