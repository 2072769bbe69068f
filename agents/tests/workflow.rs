//! Workflows against real components: every topology composes agents' text in its documented
//! order, failure semantics hold, judges reject, retry and re-route, and bad workflows are
//! refused before anything runs.
//!
//! echo answers `"{input} (task N)"` with N counting per instance, so agents called
//! concurrently are distinct installs (`echo-a`, `echo-b`, ...); parrot answers its input
//! verbatim; hostile fails on `trap`.

mod common;

use cairn_agents::workflow::{Workflow, WorkflowRun, WorkflowStatus};
use cairn_agents::{AgentError, Runtime};
use common::*;
use std::sync::Arc;

struct Env {
    _dir: tempfile::TempDir,
    rt: Runtime,
    services: Arc<FakeServices>,
}

/// A runtime with echo as `echo`, `echo-a`..`echo-d`, `parrot`, `hostile`, and `critic`.
async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let services = FakeServices::new();
    let rt = runtime(dir.path(), services.clone()).await;
    let key = key();
    rt.trust(&key.public_hex(), "tests").unwrap();
    for (example, name, extra) in [
        ("echo", "echo", ""),
        ("echo", "echo-a", ""),
        ("echo", "echo-b", ""),
        ("echo", "echo-c", ""),
        ("echo", "echo-d", ""),
        ("parrot", "parrot", "[limits]\ninstances = 8\n"),
        ("hostile", "hostile", ""),
        ("critic", "critic", "[capabilities]\nllm = true\n"),
    ] {
        rt.install(package(&key, example, name, extra), true)
            .await
            .unwrap();
    }
    Env {
        _dir: dir,
        rt,
        services,
    }
}

async fn run(env: &Env, toml: &str, input: &str) -> WorkflowRun {
    let wf = Workflow::parse(toml).unwrap();
    let run = env.rt.run_workflow(&wf, input.into()).await.unwrap();
    // What the caller got is what was stored.
    assert_eq!(env.rt.workflow_run(&run.id).unwrap(), run);
    run
}

fn ok(run: &WorkflowRun) -> &str {
    assert_eq!(run.status, WorkflowStatus::Succeeded, "{run:#?}");
    run.output.as_deref().unwrap()
}

fn failed(run: &WorkflowRun) -> &str {
    assert_eq!(run.status, WorkflowStatus::Failed, "{run:#?}");
    run.error.as_deref().unwrap()
}

fn labels(run: &WorkflowRun) -> Vec<String> {
    run.steps.iter().map(|s| s.label.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_passes_each_output_to_the_next_and_stops_at_a_failure() {
    let env = env().await;
    let wf = r#"
        name = "pipeline"
        [topology]
        kind = "sequential"
        steps = [
            { agent = "echo-a" },
            { agent = "echo-b", input = "{previous} then" },
            { agent = "parrot", input = "{input} -> {previous}" },
        ]
    "#;
    let r = run(&env, wf, "x").await;
    assert_eq!(ok(&r), "x -> x (task 1) then (task 1)");
    assert_eq!(labels(&r), ["steps[0]", "steps[1]", "steps[2]"]);
    // Every step is a real run of its agent.
    for s in &r.steps {
        let rec = env.rt.run_record(s.run_id.as_deref().unwrap()).unwrap();
        assert_eq!(rec.agent, s.agent);
        assert_eq!(rec.output, s.output);
    }
    assert_eq!(env.rt.workflow_runs(Some("pipeline"), 10).unwrap().len(), 1);

    // Submitted, it runs in the background and is stored under the returned id.
    let id = env
        .rt
        .submit_workflow(&Workflow::parse(wf).unwrap(), "y".into())
        .unwrap();
    let mut r = env.rt.workflow_run(&id).unwrap();
    for _ in 0..1200 {
        if r.status != WorkflowStatus::Running {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        r = env.rt.workflow_run(&id).unwrap();
    }
    assert_eq!(ok(&r), "y -> y (task 2) then (task 2)");
    assert_eq!(
        env.rt.workflow_runs(Some("pipeline"), 10).unwrap()[0].id,
        id
    );

    // A failed step ends the workflow; later steps never run.
    let wf = r#"
        name = "broken"
        [topology]
        kind = "sequential"
        steps = [{ agent = "hostile", input = "trap" }, { agent = "echo-c" }]
    "#;
    let r = run(&env, wf, "x").await;
    let err = failed(&r);
    assert!(
        err.contains("steps[0] (hostile) failed") && err.contains("unreachable"),
        "{err}"
    );
    assert_eq!(labels(&r), ["steps[0]"]);
    assert!(env.rt.runs(Some("echo-c"), 10).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_step_is_retried() {
    let env = env().await;
    let wf = r#"
        name = "flaky"
        [topology]
        kind = "sequential"
        steps = [{ agent = "parrot", input = "flaky:{input}", retries = 1 }]
    "#;
    let r = run(&env, wf, "hello").await;
    assert_eq!(ok(&r), "hello");
    let attempts: Vec<(u32, bool)> = r.steps.iter().map(|s| (s.attempt, s.succeeded)).collect();
    assert_eq!(attempts, [(1, false), (2, true)]);
    assert!(
        r.steps[0]
            .error
            .as_deref()
            .unwrap()
            .contains("flaky: task 1 fails")
    );

    // Retries that run out fail the step with its last error.
    let wf = r#"
        name = "hopeless"
        [topology]
        kind = "sequential"
        steps = [{ agent = "hostile", input = "trap", retries = 2 }]
    "#;
    let r = run(&env, wf, "x").await;
    assert!(failed(&r).contains("failed after 3 attempts"), "{r:?}");
    assert_eq!(r.steps.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_fans_out_and_in_in_declaration_order_with_explicit_failure_semantics() {
    let env = env().await;
    // JSON works as well as TOML.
    let wf = r#"{
        "name": "fan",
        "topology": {
            "kind": "parallel",
            "branches": [
                {"agent": "echo-a", "input": "A {input}"},
                {"agent": "echo-b", "input": "B {input}"},
                {"agent": "echo-c", "input": "C {input}"}
            ],
            "aggregator": {"agent": "parrot", "input": "all: {outputs}"}
        }
    }"#;
    let r = run(&env, wf, "x").await;
    assert_eq!(ok(&r), "all: A x (task 1)\n\nB x (task 1)\n\nC x (task 1)");
    assert_eq!(r.kind, "parallel");

    let with = |mode: &str| {
        format!(
            r#"
            name = "fan2"
            [topology]
            kind = "parallel"
            branches = [
                {{ agent = "parrot", input = "one" }},
                {{ agent = "hostile", input = "trap" }},
                {{ agent = "parrot", input = "three" }},
            ]
            failure = {mode}
            "#
        )
    };
    // Fail-fast (the default): one failed branch fails the workflow, naming it.
    let r = run(&env, &with("{ mode = \"fail-fast\" }"), "x").await;
    assert!(failed(&r).contains("branches[1] (hostile)"), "{r:?}");
    // Branches already running were awaited and recorded; no aggregator ran.
    assert_eq!(r.steps.len(), 3, "{r:#?}");
    // Best effort: the failed branch is dropped, the others stay in order.
    let r = run(&env, &with("{ mode = \"best-effort\", quorum = 2 }"), "x").await;
    assert_eq!(ok(&r), "one\n\nthree");
    // Below the quorum the workflow fails with every branch's reason.
    let r = run(&env, &with("{ mode = \"best-effort\", quorum = 3 }"), "x").await;
    let err = failed(&r);
    assert!(
        err.contains("only 2 of 3 branches succeeded, 3 needed"),
        "{err}"
    );
    assert!(err.contains("branches[1] (hostile)"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dag_runs_nodes_after_their_dependencies() {
    let env = env().await;
    let wf = r#"
        name = "graph"
        [topology]
        kind = "dag"
        [[topology.nodes]]
        id = "d"
        agent = "parrot"
        after = ["c", "b"]
        [[topology.nodes]]
        id = "a"
        agent = "echo-a"
        [[topology.nodes]]
        id = "b"
        agent = "echo-b"
        input = "b got {out.a}"
        after = ["a"]
        [[topology.nodes]]
        id = "c"
        agent = "echo-c"
        input = "c got {out.a}"
        after = ["a"]
    "#;
    let r = run(&env, wf, "x").await;
    // d's default input is its dependencies' outputs in its `after` order.
    assert_eq!(
        ok(&r),
        "c got x (task 1) (task 1)\n\nb got x (task 1) (task 1)"
    );
    let l = labels(&r);
    assert_eq!(l[0], "node a");
    assert_eq!(l[3], "node d");

    // A failed node fails the workflow; its dependents never run.
    let wf = r#"
        name = "graph-fail"
        [topology]
        kind = "dag"
        nodes = [
            { id = "a", agent = "hostile", input = "trap" },
            { id = "b", agent = "echo-d", after = ["a"] },
        ]
    "#;
    let r = run(&env, wf, "x").await;
    assert!(failed(&r).contains("node a (hostile)"), "{r:?}");
    assert!(env.rt.runs(Some("echo-d"), 10).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_runs_the_first_matching_case() {
    let env = env().await;
    let wf = r#"
        name = "triage"
        [topology]
        kind = "conditional"
        cases = [
            { when = { contains = "URGENT" }, step = { agent = "parrot", input = "page: {input}" } },
            { when = { regex = "^q:" }, step = { agent = "parrot", input = "answer: {input}" } },
        ]
        otherwise = { agent = "parrot", input = "later: {input}" }
    "#;
    assert_eq!(
        ok(&run(&env, wf, "disk is urgent").await),
        "page: disk is urgent"
    );
    assert_eq!(ok(&run(&env, wf, "q: why").await), "answer: q: why");
    assert_eq!(ok(&run(&env, wf, "hello").await), "later: hello");

    // A classifier step's output is tested instead of the input; no match and no otherwise fails.
    let wf = r#"
        name = "classified"
        [topology]
        kind = "conditional"
        check = { agent = "parrot", input = "kind=billing" }
        cases = [{ when = { contains = "kind=support" }, step = { agent = "parrot" } }]
    "#;
    let r = run(&env, wf, "x").await;
    assert!(failed(&r).contains("no case matched"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_repeats_until_the_output_matches_or_gives_up() {
    let env = env().await;
    let wf = r#"
        name = "until"
        [topology]
        kind = "loop"
        body = { agent = "echo-a" }
        until = { regex = "\\(task 3\\)$" }
        max_iterations = 10
    "#;
    let r = run(&env, wf, "x").await;
    assert_eq!(ok(&r), "x (task 1) (task 2) (task 3)");
    assert_eq!(labels(&r), ["iteration 1", "iteration 2", "iteration 3"]);

    let wf = r#"
        name = "never"
        [topology]
        kind = "loop"
        body = { agent = "echo-b" }
        until = { contains = "done" }
        max_iterations = 2
        fail_if_exhausted = true
    "#;
    let r = run(&env, wf, "x").await;
    assert!(
        failed(&r).contains("did not match within 2 iterations"),
        "{r:?}"
    );
    assert_eq!(r.steps.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hierarchical_manager_delegates_to_named_workers_and_synthesises() {
    let env = env().await;
    let wf = r#"
        name = "team"
        [topology]
        kind = "hierarchical"
        manager = { agent = "parrot" }
        workers = [{ agent = "echo-a" }, { agent = "echo-b" }]
        synthesis = "Report for {input}:\n{outputs}"
    "#;
    // The manager's plan (parrot repeats it) names workers line by line; other lines are notes.
    let plan = "echo-b: write summary\nnobody: ignored\nplan ends\necho-a: find facts";
    let r = run(&env, wf, plan).await;
    assert_eq!(
        ok(&r),
        format!("Report for {plan}:\nwrite summary (task 1)\n\nfind facts (task 1)")
    );
    let delegated: Vec<&str> = r
        .steps
        .iter()
        .filter(|s| s.label.starts_with("delegate"))
        .map(|s| s.agent.as_str())
        .collect();
    assert_eq!(delegated.len(), 2);
    assert!(env.rt.runs(Some("echo-c"), 10).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debate_runs_rounds_over_the_transcript_then_the_judge_decides() {
    let env = env().await;
    let wf = r#"
        name = "argue"
        [topology]
        kind = "debate"
        debaters = [{ agent = "echo-a" }, { agent = "echo-b" }]
        rounds = 2
        judge = { agent = "parrot", input = "VERDICT\n{transcript}" }
    "#;
    let r = run(&env, wf, "x").await;
    let t1 = "echo-a: x (task 1)\necho-b: x (task 1)";
    let second = format!("x\n{t1} (task 2)");
    assert_eq!(
        ok(&r),
        format!("VERDICT\n{t1}\necho-a: {second}\necho-b: {second}")
    );
    assert_eq!(r.steps.len(), 5);
    assert_eq!(r.steps[4].label, "judge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixture_of_agents_aggregates_the_proposals() {
    let env = env().await;
    let wf = r#"
        name = "moa"
        [topology]
        kind = "mixture"
        proposers = [{ agent = "echo-a", input = "A: {input}" }, { agent = "echo-b", input = "B: {input}" }]
        aggregator = { agent = "parrot", input = "best of:\n{outputs}" }
        layers = 2
    "#;
    let r = run(&env, wf, "x").await;
    // Both layers ran (echo counts 2); explicit templates without {outputs} ignore the
    // previous layer, and the aggregator sees the last layer in declaration order.
    assert_eq!(ok(&r), "best of:\nA: x (task 2)\n\nB: x (task 2)");
    assert_eq!(r.steps.len(), 5);

    // Best effort with a quorum tolerates a failing proposer.
    let wf = r#"
        name = "moa2"
        [topology]
        kind = "mixture"
        proposers = [{ agent = "parrot", input = "p1" }, { agent = "hostile", input = "trap" }, { agent = "parrot", input = "p3" }]
        aggregator = { agent = "parrot" }
        failure = { mode = "best-effort", quorum = 2 }
    "#;
    assert_eq!(ok(&run(&env, wf, "x").await), "p1\n\np3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voting_picks_the_majority_or_reports_no_consensus() {
    let env = env().await;
    let wf = r#"
        name = "vote"
        [topology]
        kind = "voting"
        voters = [{ agent = "echo-a", input = "Yes" }, { agent = "echo-b", input = "no" }, { agent = "echo-c", input = "yes" }]
        extract = "^(\\w+)"
    "#;
    assert_eq!(ok(&run(&env, wf, "ship it?").await), "Yes");

    let wf = r#"
        name = "split"
        [topology]
        kind = "voting"
        voters = [{ agent = "parrot", input = "yes" }, { agent = "hostile", input = "trap" }, { agent = "echo-d", input = "no" }]
        extract = "^(\\w+)"
        failure = { mode = "best-effort" }
    "#;
    let r = run(&env, wf, "ship it?").await;
    assert!(failed(&r).contains("no consensus: a tie"), "{r:?}");

    let wf = r#"
        name = "weak"
        [topology]
        kind = "voting"
        voters = [{ agent = "parrot", input = "yes" }, { agent = "parrot", input = "no" }, { agent = "parrot", input = "maybe" }, { agent = "parrot", input = "yes" }]
        min_votes = 3
    "#;
    let r = run(&env, wf, "?").await;
    assert!(
        failed(&r).contains("\"yes\" has 2 of 4 votes, 3 needed"),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_reduce_maps_every_item_and_reduces_in_order() {
    let env = env().await;
    let wf = r#"
        name = "mr"
        [topology]
        kind = "map-reduce"
        mapper = { agent = "parrot", input = "[{index}] {item}" }
        reducer = { agent = "parrot", input = "{outputs}" }
    "#;
    let r = run(&env, wf, "apples\n  pears \n\nplums").await;
    assert_eq!(ok(&r), "[0] apples\n\n[1] pears\n\n[2] plums");
    assert_eq!(r.steps.len(), 4);

    let wf = r#"
        name = "mr-fail"
        [topology]
        kind = "map-reduce"
        mapper = { agent = "hostile" }
        reducer = { agent = "parrot" }
        separator = ","
        failure = { mode = "best-effort", quorum = 2 }
    "#;
    let r = run(&env, wf, "trap, fine, trap").await;
    assert!(
        failed(&r).contains("only 1 of 3 branches succeeded"),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_generates_critiques_and_revises() {
    let env = env().await;
    let wf = r#"
        name = "reflect"
        [topology]
        kind = "reflection"
        generator = { agent = "parrot", input = "draft of {input}" }
        critic = { agent = "echo-a", input = "critique {round}" }
        reviser = { agent = "parrot", input = "{draft} + fix({critique})" }
        rounds = 2
    "#;
    let r = run(&env, wf, "x").await;
    assert_eq!(
        ok(&r),
        "draft of x + fix(critique 1 (task 1)) + fix(critique 2 (task 2))"
    );
    assert_eq!(
        labels(&r),
        [
            "generator",
            "round 1 critic",
            "round 1 reviser",
            "round 2 critic",
            "round 2 reviser"
        ]
    );

    // The critic approving ends the rounds early with the draft unchanged.
    let wf = r#"
        name = "approved"
        [topology]
        kind = "reflection"
        generator = { agent = "parrot" }
        critic = { agent = "parrot", input = "Approved." }
        rounds = 3
        stop_when = { contains = "approved" }
    "#;
    let r = run(&env, wf, "fine draft").await;
    assert_eq!(ok(&r), "fine draft");
    assert_eq!(r.steps.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_mesh_shows_every_agent_all_outputs() {
    let env = env().await;
    let wf = r#"
        name = "mesh"
        [topology]
        kind = "broadcast"
        agents = [{ agent = "echo-a" }, { agent = "echo-b" }]
        rounds = 2
    "#;
    let r = run(&env, wf, "x").await;
    let all = "x (task 1)\n\nx (task 1)";
    assert_eq!(ok(&r), format!("{all} (task 2)\n\n{all} (task 2)"));
    assert_eq!(r.steps.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn star_hub_sends_to_every_spoke_and_combines() {
    let env = env().await;
    let wf = r#"
        name = "star"
        [topology]
        kind = "star"
        hub = { agent = "parrot", input = "to all: {input}" }
        spokes = [{ agent = "echo-a" }, { agent = "echo-b", input = "B {previous}" }]
        synthesis = "hub heard:\n{outputs}"
    "#;
    let r = run(&env, wf, "x").await;
    assert_eq!(
        ok(&r),
        "hub heard:\nto all: x (task 1)\n\nB to all: x (task 1)"
    );
    assert_eq!(r.steps.first().unwrap().label, "hub");
    assert_eq!(r.steps.last().unwrap().label, "hub synthesis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_takes_turns_in_order() {
    let env = env().await;
    let wf = r#"
        name = "turns"
        [topology]
        kind = "round-robin"
        agents = [{ agent = "echo-a" }, { agent = "echo-b" }]
        turns = 3
    "#;
    let r = run(&env, wf, "x").await;
    assert_eq!(ok(&r), "x (task 1) (task 1) (task 2)");
    assert_eq!(
        labels(&r),
        ["turn 1 agents[0]", "turn 2 agents[1]", "turn 3 agents[0]"]
    );
    let agents: Vec<&str> = r.steps.iter().map(|s| s.agent.as_str()).collect();
    assert_eq!(agents, ["echo-a", "echo-b", "echo-a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_judges_reject_with_every_reason() {
    let env = env().await;
    let wf = r#"
        name = "ruled"
        [topology]
        kind = "sequential"
        steps = [{ agent = "parrot" }]
        [judge]
        judges = [
            { kind = "regex", pattern = "^Answer:" },
            { kind = "length", max = 20 },
            { kind = "banned", name = "no-secrets", terms = ["password"] },
            { kind = "json-schema", schema = { type = "object" } },
        ]
    "#;
    let r = run(&env, wf, "Answer: the password is hunter2").await;
    assert_eq!(r.status, WorkflowStatus::Rejected, "{r:#?}");
    let err = r.error.as_deref().unwrap();
    assert!(err.starts_with("rejected by the judges"), "{err}");
    assert!(
        err.contains("length#1: output has 31 characters, more than 20"),
        "{err}"
    );
    assert!(
        err.contains("no-secrets: output contains banned terms"),
        "{err}"
    );
    assert!(err.contains("json-schema#3: output is not JSON"), "{err}");
    assert!(!err.contains("regex#0"), "the regex judge passed: {err}");
    assert_eq!(r.judgements.len(), 1);
    assert!(!r.judgements[0].passed);

    // Three of four equal weights pass: a majority.
    let r = run(&env, wf, "Answer: 42").await;
    assert_eq!(ok(&r), "Answer: 42");
    assert_eq!(r.judgements[0].score, Some(0.75));
    // Demanding more than 80% of the weight rejects the same output, naming the dissenter.
    let strict = wf.replace("judges = [", "majority = 0.8\njudges = [");
    let r = run(&env, &strict, "Answer: 42").await;
    assert_eq!(r.status, WorkflowStatus::Rejected, "{r:#?}");
    assert!(
        r.error
            .as_deref()
            .unwrap()
            .contains("json-schema#3: output is not JSON"),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_outputs_are_retried_or_rerouted() {
    let env = env().await;
    let wf = r#"
        name = "again"
        [topology]
        kind = "sequential"
        steps = [{ agent = "echo-a" }]
        [judge]
        judges = [{ kind = "regex", pattern = "task 2" }]
        on_fail = "retry"
        retries = 2
    "#;
    let r = run(&env, wf, "x").await;
    assert_eq!(ok(&r), "x (task 2)");
    let passes: Vec<bool> = r.judgements.iter().map(|j| j.passed).collect();
    assert_eq!(passes, [false, true]);
    assert_eq!(r.steps.iter().map(|s| s.pass).collect::<Vec<_>>(), [1, 2]);

    let wf = r#"
        name = "elsewhere"
        [topology]
        kind = "sequential"
        steps = [{ agent = "parrot" }]
        [judge]
        judges = [{ kind = "banned", terms = ["draft"] }]
        on_fail = "reroute"
        alternate = { agent = "echo-b", input = "clean copy" }
    "#;
    let r = run(&env, wf, "rough").await;
    assert_eq!(ok(&r), "rough", "passed first time, no re-route");
    assert!(r.rerouted_to.is_none());
    let r = run(&env, wf, "a draft").await;
    assert_eq!(ok(&r), "clean copy (task 1)");
    assert_eq!(r.rerouted_to.as_deref(), Some("echo-b"));
    assert_eq!(r.judgements.len(), 1 + 1);
    assert_eq!(r.judgements[1].target, "reroute");

    // The alternate's output is judged too; failing again rejects.
    let r = run(&env, &wf.replace("clean copy", "{output} again"), "a draft").await;
    assert_eq!(r.status, WorkflowStatus::Rejected, "{r:#?}");
    assert!(r.error.as_deref().unwrap().contains("banned"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_judges_score_through_the_router_and_feed_it_back() {
    let env = env().await;
    let wf = r#"
        name = "reviewed"
        task_kind = "review"
        [topology]
        kind = "sequential"
        steps = [{ agent = "critic" }]
        [judge]
        min_judges = 2
        judges = [
            { kind = "json-schema", schema = { type = "object", required = ["score", "critique"], properties = { score = { type = "integer" } } } },
            { kind = "llm", name = "quality", rubric = "Is the critique specific?", weight = 2 },
        ]
    "#;
    let r = run(&env, wf, "A short essay.").await;
    let out = ok(&r);
    assert!(out.contains("\"score\":8"), "{out}");
    let j = &r.judgements[0];
    let llm = &j.verdicts[1];
    assert_eq!(llm.judge, "quality");
    assert_eq!(llm.model.as_deref(), Some("fake-model"));
    assert_eq!(llm.score, Some(0.8));
    assert_eq!(llm.passed, Some(true));
    // Weighted mean: (1 * 1.0 + 2 * 0.8) / 3.
    let score = j.score.unwrap();
    assert!((score - 2.6 / 3.0).abs() < 1e-9, "{score}");
    {
        let seen = env.services.seen.lock().unwrap();
        // The judge called the router as "judge" with its rubric; the critic's model got the score.
        assert!(seen.callers.contains(&"judge".to_string()));
        assert!(
            seen.chats
                .iter()
                .any(|c| c.messages[0].content.contains("Is the critique specific?"))
        );
        assert_eq!(
            seen.scores,
            [("fake-model".to_string(), "review".to_string(), score)]
        );
    }
    assert_eq!(r.steps[0].models, ["fake-model"]);

    // A stricter LLM judge that outweighs the schema rejects, with its reason.
    let strict = wf.replace("weight = 2", "weight = 2, threshold = 9");
    let r = run(&env, &strict, "A short essay.").await;
    assert_eq!(r.status, WorkflowStatus::Rejected, "{r:#?}");
    assert!(
        r.error
            .as_deref()
            .unwrap()
            .contains("quality: scored 8 of 10, below 9"),
        "{r:?}"
    );
}

fn refused(text: &str) -> String {
    match Workflow::parse(text) {
        Ok(_) => panic!("accepted: {text}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_workflows_are_refused_before_anything_runs() {
    let env = env().await;
    let seq = |extra: &str| {
        format!(
            "name = \"w\"\n[topology]\nkind = \"sequential\"\nsteps = [{{ agent = \"echo\" }}]\n{extra}"
        )
    };
    // Unknown fields, anywhere, in TOML and JSON.
    let e = refused(&format!("colour = \"red\"\n{}", seq("")));
    assert!(e.contains("unknown field `colour`"), "{e}");
    let e = refused(&seq("rounds = 2"));
    assert!(e.contains("unknown field `rounds`"), "{e}");
    let e = refused(
        "name = \"w\"\n[topology]\nkind = \"sequential\"\nsteps = [{ agent = \"echo\", tries = 2 }]\n",
    );
    assert!(e.contains("unknown field `tries`"), "{e}");
    let e =
        refused(r#"{"name": "w", "topology": {"kind": "sequential", "steps": [], "extra": 1}}"#);
    assert!(e.contains("unknown field `extra`"), "{e}");
    let e = refused(r#"{"name": "w", "topology": {"kind": "ring", "agents": []}}"#);
    assert!(e.contains("unknown variant `ring`"), "{e}");
    // Impossible parameters.
    let e = refused("name = \"w\"\n[topology]\nkind = \"parallel\"\nbranches = []\n");
    assert!(e.contains("topology.branches must not be empty"), "{e}");
    let e = refused(
        "name = \"w\"\n[topology]\nkind = \"debate\"\ndebaters = [{ agent = \"echo\" }]\nrounds = 0\njudge = { agent = \"echo\" }\n",
    );
    assert!(e.contains("topology.rounds must be 1..=100, not 0"), "{e}");
    let e = refused(
        "name = \"w\"\n[topology]\nkind = \"parallel\"\nbranches = [{ agent = \"echo\" }]\nfailure = { mode = \"best-effort\", quorum = 2 }\n",
    );
    assert!(e.contains("quorum must be 1..=1, not 2"), "{e}");
    let e = refused(&seq(
        "[judge]\njudges = [{ kind = \"regex\", pattern = \"x\" }]\non_fail = \"reroute\"\n",
    ));
    assert!(e.contains("needs an `alternate` step"), "{e}");
    let e = refused(&seq(
        "[judge]\njudges = [{ kind = \"length\", min = 5, max = 2 }]\n",
    ));
    assert!(e.contains("min 5 is above max 2"), "{e}");
    // A cycle where a DAG is required names the nodes on it.
    let e = refused(
        r#"
        name = "loopy"
        [topology]
        kind = "dag"
        nodes = [
            { id = "start", agent = "echo" },
            { id = "x", agent = "echo", after = ["start", "y"] },
            { id = "y", agent = "echo", after = ["x"] },
        ]
        "#,
    );
    assert!(e.contains("dag: cycle through nodes x, y"), "{e}");
    let e = refused(
        "name = \"w\"\n[topology]\nkind = \"dag\"\nnodes = [{ id = \"a\", agent = \"echo\", after = [\"b\"] }]\n",
    );
    assert!(e.contains("depends on unknown node \"b\""), "{e}");

    // Unknown agents are refused by the runtime, all named, before any run.
    let wf = Workflow::parse(
        "name = \"w\"\n[topology]\nkind = \"sequential\"\nsteps = [{ agent = \"echo\" }, { agent = \"ghost\" }, { agent = \"phantom\" }]\n",
    )
    .unwrap();
    let e = env.rt.run_workflow(&wf, "x".into()).await.unwrap_err();
    assert!(matches!(e, AgentError::NotFound(_)), "{e}");
    assert!(
        e.to_string()
            .contains("unknown agents \"ghost\", \"phantom\""),
        "{e}"
    );
    assert!(env.rt.runs(None, 10).unwrap().is_empty(), "nothing ran");
    assert!(env.rt.workflow_runs(None, 10).unwrap().is_empty());
}

/// Installs hostile as `spinner`, whose "loop" spins until its fuel or wall time runs out:
/// here, an hour.
async fn install_spinner(env: &Env) {
    let key = key();
    env.rt.trust(&key.public_hex(), "spin").unwrap();
    env.rt
        .install(
            package(
                &key,
                "hostile",
                "spinner",
                "[limits]\nfuel_per_task = 18000000000000000000\nwall_time_ms = 3600000\n",
            ),
            true,
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_workflow_aborts_its_runs_and_starts_no_further_step() {
    let env = env().await;
    install_spinner(&env).await;
    let wf = Workflow::parse(
        "name = \"slow\"\n[topology]\nkind = \"sequential\"\nsteps = [{ agent = \"spinner\", input = \"loop\", retries = 2 }, { agent = \"echo\" }]\n",
    )
    .unwrap();
    let id = env.rt.submit_workflow(&wf, "x".into()).unwrap();
    // Wait until the spinner's run is under way.
    let spinning = loop {
        if let Some(r) = env
            .rt
            .runs(Some("spinner"), 5)
            .unwrap()
            .into_iter()
            .find(|r| r.status == cairn_agents::db::RunStatus::Running)
        {
            break r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let cancelled = env
        .rt
        .cancel_workflow(&id, "the operator changed their mind")
        .await
        .unwrap();
    assert_eq!(
        cancelled.status,
        WorkflowStatus::Cancelled,
        "{cancelled:#?}"
    );
    assert!(
        cancelled
            .error
            .as_deref()
            .unwrap()
            .contains("the operator changed their mind"),
        "{cancelled:?}"
    );
    // The spinner's run was aborted with the reason, was not retried, and echo never ran.
    let spun = env.rt.run_record(&spinning.id).unwrap();
    assert_eq!(spun.status, cairn_agents::db::RunStatus::Killed);
    assert!(
        spun.error
            .as_deref()
            .unwrap()
            .contains("cancelled with its workflow"),
        "{spun:?}"
    );
    assert_eq!(env.rt.runs(Some("spinner"), 10).unwrap().len(), 1);
    assert!(env.rt.runs(Some("echo"), 10).unwrap().is_empty());
    assert_eq!(labels(&cancelled), ["steps[0]"]);
    // What was stored is what the caller got; a second cancel is a conflict naming the state.
    assert_eq!(env.rt.workflow_run(&id).unwrap(), cancelled);
    match env.rt.cancel_workflow(&id, "again").await {
        Err(AgentError::Conflict(m)) => assert!(m.contains("already ended (cancelled)"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        env.rt.cancel_workflow("wf-missing", "x").await,
        Err(AgentError::NotFound(_))
    ));
    // The appliance goes on: the same agents serve the next workflow.
    let r = run(
        &env,
        "name = \"after\"\n[topology]\nkind = \"sequential\"\nsteps = [{ agent = \"spinner\" }, { agent = \"echo\" }]\n",
        "hi",
    )
    .await;
    assert_eq!(ok(&r), "ok (task 1)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_run_can_be_cancelled() {
    let env = env().await;
    install_spinner(&env).await;
    let id = env.rt.submit("spinner", "loop".into(), None).unwrap();
    while env.rt.run_record(&id).unwrap().status != cairn_agents::db::RunStatus::Running {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let r = env.rt.cancel_run(&id, "not needed").await.unwrap();
    assert_eq!(r.status, cairn_agents::db::RunStatus::Killed);
    assert_eq!(r.error.as_deref(), Some("not needed"));
    assert!(matches!(
        env.rt.cancel_run(&id, "again").await,
        Err(AgentError::Conflict(_))
    ));
    // The agent itself stays started and answers.
    let next = env.rt.run("spinner", "hello".into(), None).await.unwrap();
    assert_eq!(next.output.as_deref(), Some("ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_definitions_are_stored_versioned_and_run_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let text = "name = \"greet\"\ndescription = \"says hi twice\"\n[topology]\nkind = \"sequential\"\nsteps = [{ agent = \"echo\" }, { agent = \"echo\" }]\n";
    {
        let services = FakeServices::new();
        let rt = runtime(dir.path(), services).await;
        let key = key();
        rt.trust(&key.public_hex(), "tests").unwrap();
        rt.install(package(&key, "echo", "echo", ""), true)
            .await
            .unwrap();
        let s = rt.save_workflow(text).unwrap();
        assert_eq!((s.version, s.kind.as_str()), (1, "sequential"));
        assert_eq!(s.agents, ["echo"]);
        assert_eq!(rt.save_workflow(text).unwrap().version, 2);
        // Refused with the reason, and nothing stored: unknown agent, reserved name, bad file.
        let e = rt
            .save_workflow(
                &text
                    .replace("greet", "other")
                    .replace("\"echo\" }]", "\"ghost\" }]"),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown agent \"ghost\""), "{e}");
        let e = rt
            .save_workflow(&text.replace("greet", "runs"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("reserved"), "{e}");
        assert!(rt.save_workflow("name = 3").is_err());
        assert_eq!(rt.stored_workflows().unwrap().len(), 1);
    }
    // After a restart the definition is there, and runs as stored.
    let services = FakeServices::new();
    let rt = runtime(dir.path(), services).await;
    let s = rt.stored_workflow("greet").unwrap();
    assert_eq!((s.version, s.description.as_str()), (2, "says hi twice"));
    let wf = Workflow::parse(&s.text).unwrap();
    let r = rt.run_workflow(&wf, "hi".into()).await.unwrap();
    assert!(
        r.output
            .as_deref()
            .unwrap()
            .starts_with("hi (task 1) (task "),
        "{r:?}"
    );
    rt.delete_workflow("greet").unwrap();
    assert!(matches!(
        rt.stored_workflow("greet"),
        Err(AgentError::NotFound(_))
    ));
    assert!(matches!(
        rt.delete_workflow("greet"),
        Err(AgentError::NotFound(_))
    ));
}
