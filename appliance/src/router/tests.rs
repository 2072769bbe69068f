//! Router unit tests: policy order, budgets refused before any call, keys at rest.

use super::*;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};

fn no_models() -> Arc<Inference> {
    Arc::new(
        Inference::new(&crate::inference::InferenceOptions {
            store: None,
            registry: None,
            device: crate::inference::DeviceChoice::Cpu,
            threads: 1,
            load: crate::inference::LoadPolicy::Lazy,
        })
        .unwrap(),
    )
}

fn router_in(dir: &std::path::Path) -> (Router, crate::store::Store) {
    let store = crate::store::Store::open(dir).unwrap();
    let r = Router::open(RouterOptions {
        inference: no_models(),
        metrics: Arc::new(Metrics::default()),
        db: Some((store.database(), store.path().to_path_buf())),
        data_dir: dir.to_path_buf(),
    });
    (r, store)
}

/// A TCP listener that counts connections and answers nothing useful.
fn counting_listener() -> (u16, Arc<AtomicUsize>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            n2.fetch_add(1, Ordering::SeqCst);
            drop(c);
        }
    });
    (port, n)
}

fn provider(name: &str, port: u16, price: f64, key: Option<&str>) -> config::ProviderInput {
    let mut v = json!({"name": name, "kind": "openai", "base_url": format!("http://127.0.0.1:{port}/v1"),
                       "models": [{"id": "m", "input_per_1k_usd": price, "output_per_1k_usd": price}],
                       "max_retries": 0});
    if let Some(k) = key {
        v["key"] = json!(k);
    }
    config::parse_provider(v, None).unwrap()
}

fn ask(model: Option<&str>) -> ChatCall {
    ChatCall {
        model: model.map(str::to_string),
        messages: vec![ChatMessage::new("user", "hello")],
        max_tokens: Some(10),
        ..Default::default()
    }
}

#[test]
fn policies_order_candidates() {
    let r = |local, cost, lat: Option<f64>, n, sum| Rank {
        local,
        cost,
        latency_ms: lat,
        score: (n > 0).then_some(Score { n, sum }),
    };
    let c = vec![
        r(true, 0.0, Some(900.0), 4, 1.6),    // 0: local, slow, mediocre
        r(false, 0.02, Some(100.0), 4, 3.6),  // 1: pricey, fast, good
        r(false, 0.001, Some(300.0), 0, 0.0), // 2: cheap, unscored
        r(false, 0.005, None, 1, 0.2),        // 3: unmeasured
    ];
    assert_eq!(rank(Policy::LocalOnly, &c), vec![0]);
    assert_eq!(rank(Policy::PreferLocal, &c), vec![0, 2, 3, 1]);
    assert_eq!(rank(Policy::Cheapest, &c), vec![0, 2, 3, 1]);
    assert_eq!(rank(Policy::Fastest, &c), vec![3, 1, 2, 0]);
    // Means with a 0.5 prior: 1 → 0.82, 2 → 0.5, 0 → 0.42, 3 → 0.35.
    assert_eq!(rank(Policy::BestQuality, &c), vec![1, 2, 0, 3]);
}

#[tokio::test]
async fn local_only_default_sensitive_and_offline_never_call_out() {
    let dir = tempfile::tempdir().unwrap();
    let (router, _store) = router_in(dir.path());
    let (port, hits) = counting_listener();
    router
        .create_provider(provider("cloud", port, 0.0, None))
        .unwrap();
    // Default policy: local-only.
    let e = router
        .chat(&CallContext::default(), ask(Some("cloud/m")))
        .await
        .unwrap_err();
    assert_eq!(e.status(), 403, "{e}");
    assert!(e.to_string().contains("local-only"), "{e}");
    // A call cannot widen the configured policy.
    let cheap = CallContext {
        policy: Some(Policy::Cheapest),
        ..Default::default()
    };
    let e = router.chat(&cheap, ask(Some("cloud/m"))).await.unwrap_err();
    assert_eq!(e.status(), 403, "{e}");
    assert!(e.to_string().contains("wider than"), "{e}");
    let mut s = router.settings();
    s.policy = Policy::Cheapest;
    router.set_settings(s).unwrap();
    // Policy allows it, but the data is sensitive.
    let ctx = CallContext {
        policy: Some(Policy::Cheapest),
        sensitive: true,
        ..Default::default()
    };
    let e = router.chat(&ctx, ask(Some("cloud/m"))).await.unwrap_err();
    assert!(e.to_string().contains("sensitive"), "{e}");
    // Without a model, sensitive leaves no target at all.
    let e = router.chat(&ctx, ask(None)).await.unwrap_err();
    assert_eq!(e.status(), 503, "{e}");
    // Offline.
    let mut s = router.settings();
    s.offline = true;
    s.policy = Policy::Cheapest;
    router.set_settings(s).unwrap();
    let e = router
        .chat(&CallContext::default(), ask(Some("cloud/m")))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("offline"), "{e}");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    // Unknown models are 404 whatever the policy.
    let e = router
        .chat(&CallContext::default(), ask(Some("cloud/nope")))
        .await
        .unwrap_err();
    assert_eq!(e.status(), 404);
}

#[tokio::test]
async fn budgets_refuse_before_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let (router, _store) = router_in(dir.path());
    let (port, hits) = counting_listener();
    router
        .create_provider(provider("cloud", port, 1.0, None))
        .unwrap();
    let mut s = router.settings();
    s.policy = Policy::Cheapest;
    s.budgets.global.cost_per_day_usd = Some(0.001);
    router.set_settings(s.clone()).unwrap();
    // 10 prompt tokens + 10 completion tokens at $1/1k is $0.02 > $0.001: refused, 402.
    let e = router
        .chat(&CallContext::default(), ask(Some("cloud/m")))
        .await
        .unwrap_err();
    assert_eq!(e.status(), 402, "{e}");
    assert_eq!(e.code(), Some("budget_exceeded"));
    // A call's own cost ceiling: 403.
    s.budgets.global.cost_per_day_usd = None;
    router.set_settings(s.clone()).unwrap();
    let ctx = CallContext {
        max_cost_usd: Some(0.0001),
        ..Default::default()
    };
    let e = router.chat(&ctx, ask(Some("cloud/m"))).await.unwrap_err();
    assert_eq!(e.status(), 403, "{e}");
    // Tokens per hour, per agent: 429 with Retry-After, other callers unaffected.
    s.budgets.agents.insert(
        "bob".into(),
        config::Budget {
            tokens_per_hour: Some(5),
            cost_per_day_usd: None,
        },
    );
    router.set_settings(s).unwrap();
    let bob = CallContext {
        caller: Caller::Agent {
            name: "bob".into(),
            run: None,
        },
        ..Default::default()
    };
    let e = router.chat(&bob, ask(Some("cloud/m"))).await.unwrap_err();
    assert_eq!(e.status(), 429, "{e}");
    assert!(e.retry_after().is_some_and(|s| s <= 3600));
    assert!(e.to_string().contains("bob"), "{e}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a refused call must not reach the provider"
    );
    // The API caller is not bound by bob's budget: it reaches the provider (which fails).
    let e = router
        .chat(&CallContext::default(), ask(Some("cloud/m")))
        .await
        .unwrap_err();
    assert_eq!(e.status(), 503, "{e}");
    assert!(hits.load(Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn keys_are_write_only_and_encrypted_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "sk-router-test-7f3a9c1e5b";
    {
        let (router, _store) = router_in(dir.path());
        let v = router
            .create_provider(provider("cloud", 9, 0.0, Some(secret)))
            .unwrap();
        assert!(v.key_set);
        let shown = serde_json::to_string(&router.providers()).unwrap();
        assert!(!shown.contains(secret), "{shown}");
        assert!(shown.contains("\"key_set\":true"), "{shown}");
        // Updating without a key keeps it.
        let mut upd = provider("cloud", 9, 0.5, None);
        upd.key = None;
        assert!(router.update_provider(upd).unwrap().key_set);
    }
    for f in ["cairn.redb", keys::KEY_FILE] {
        let bytes = std::fs::read(dir.path().join(f)).unwrap();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{f} holds the key in clear"
        );
    }
    let (router, _store) = router_in(dir.path());
    let p = router
        .providers
        .read()
        .unwrap()
        .get("cloud")
        .cloned()
        .unwrap();
    assert_eq!(p.key.as_deref(), Some(secret));
    assert!((p.config.models[0].input_per_1k_usd - 0.5).abs() < 1e-12);
    // "" removes the key.
    let mut upd = provider("cloud", 9, 0.5, None);
    upd.key = Some(String::new());
    assert!(!router.update_provider(upd).unwrap().key_set);
}

#[test]
fn scores_are_learned_and_persisted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (router, _store) = router_in(dir.path());
        router.record_score("cloud/m", "code", 0.9);
        router.record_score("cloud/m", "code", 2.0); // clamped to 1
        router.record_score("cloud/m", "code", f64::NAN); // ignored
    }
    let (router, _store) = router_in(dir.path());
    let s = router.scores();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].n, 2);
    assert!((s[0].mean - 0.95).abs() < 1e-9);
}

/// A probe whose caller goes away frees the half-open breaker's slot: the next call probes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_probe_frees_the_breaker() {
    let dir = tempfile::tempdir().unwrap();
    let (router, _store) = router_in(dir.path());
    // The first connection is closed at once (a failure that opens the breaker); later ones
    // are held open without an answer.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(AtomicUsize::new(0));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming().flatten() {
            if seen2.fetch_add(1, Ordering::SeqCst) > 0 {
                held.push(c);
            }
        }
    });
    let mut v = json!({"name": "cloud", "kind": "openai", "base_url": format!("http://127.0.0.1:{port}/v1"),
                       "models": [{"id": "m"}], "max_retries": 0, "breaker_failures": 1,
                       "breaker_cooldown_ms": 100});
    v["timeout_ms"] = json!(60_000);
    router
        .create_provider(config::parse_provider(v, None).unwrap())
        .unwrap();
    let mut s = router.settings();
    s.policy = Policy::Cheapest;
    router.set_settings(s).unwrap();
    let ctx = CallContext::default();
    assert!(router.chat(&ctx, ask(Some("cloud/m"))).await.is_err());
    let deadline = Instant::now() + Duration::from_secs(30);
    let wait_for = |state: BreakerState| {
        let router = &router;
        async move {
            while router.breakers()[0].state != state {
                assert!(
                    Instant::now() < deadline,
                    "the breaker never became {state:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(BreakerState::HalfOpen).await;
    // The probe reaches the provider, which never answers; its caller gives up.
    for connections in [2, 3] {
        let call = router.chat(&ctx, ask(Some("cloud/m")));
        tokio::pin!(call);
        loop {
            tokio::select! {
                r = &mut call => panic!("the probe ended: {:?}", r.err()),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            if seen.load(Ordering::SeqCst) >= connections {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the probe never reached the provider"
            );
        }
        // Dropping the call here abandons the probe.
    }
}
