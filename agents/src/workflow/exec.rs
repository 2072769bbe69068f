//! Executes a checked workflow: composes each call's input from its template, runs the agents
//! through the runtime (fan-outs concurrently), applies the failure semantics, then the judges.

use super::{
    Failure, FailureMode, Judgement, OnFail, Step, StepRecord, Topology, Workflow, WorkflowRun,
    WorkflowStatus,
};
use crate::db::{RunStatus, now_ms};
use crate::runtime::Runtime;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

type Vars = HashMap<String, String>;

fn vars(pairs: &[(&str, &str)]) -> Vars {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Replaces `{name}` for every known variable; anything else (JSON braces included) stays.
pub(crate) fn render(tpl: &str, vars: &Vars) -> String {
    let mut out = String::with_capacity(tpl.len());
    let mut rest = tpl;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) if vars.contains_key(&after[..close]) => {
                out.push_str(&vars[&after[..close]]);
                rest = &after[close + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Outputs joined in declaration order, separated by a blank line.
fn join(outs: &[String]) -> String {
    outs.join("\n\n")
}

fn new_id() -> String {
    let mut r = [0u8; 6];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut r);
    format!("wf-{:012x}-{}", now_ms(), hex::encode(r))
}

/// Cancellation of one workflow run: why it was cancelled, and the agent runs in flight.
#[derive(Default)]
pub(crate) struct Cancel {
    reason: Mutex<Option<String>>,
    /// Run id → agent, of the runs started and not yet ended.
    inflight: Mutex<HashMap<String, String>>,
}

impl Cancel {
    /// Why the run was cancelled, once it was.
    pub(crate) fn reason(&self) -> Option<String> {
        self.reason.lock().expect("cancel lock").clone()
    }

    /// Marks the workflow cancelled (the first reason stays) and aborts its runs in flight.
    pub(crate) fn cancel(&self, rt: &Runtime, reason: &str) {
        let reason = {
            let mut r = self.reason.lock().expect("cancel lock");
            r.get_or_insert_with(|| reason.to_string()).clone()
        };
        let runs: Vec<_> = self
            .inflight
            .lock()
            .expect("cancel lock")
            .iter()
            .map(|(id, agent)| (id.clone(), agent.clone()))
            .collect();
        for (id, agent) in runs {
            rt.abort_run(
                &id,
                &agent,
                &format!("cancelled with its workflow: {reason}"),
            );
        }
    }
}

struct Ctx {
    rt: Runtime,
    run: Mutex<WorkflowRun>,
    pass: AtomicU32,
    cancel: Arc<Cancel>,
}

/// One call of a fan-out: label, step, default template, variables.
type Call = (String, Step, &'static str, Vars);

impl Ctx {
    fn save(&self, durable: bool) {
        let run = self.run.lock().expect("workflow run lock").clone();
        if let Err(e) = self.rt.db().put_workflow_run(&run, durable) {
            tracing::warn!(workflow_run = %run.id, error = %e, "could not store a workflow run");
        }
    }

    fn record(&self, rec: StepRecord) {
        self.run.lock().expect("workflow run lock").steps.push(rec);
        self.save(false);
    }

    /// Runs an agent, known to [`Cancel`] while it is in flight.
    async fn run_agent(
        &self,
        agent: &str,
        input: String,
    ) -> Result<crate::db::RunRecord, crate::runtime::AgentError> {
        let (id, fut) = self.rt.start_run(agent, input)?;
        self.cancel
            .inflight
            .lock()
            .expect("cancel lock")
            .insert(id.clone(), agent.to_string());
        // A cancel between the check in `call` and the registration above.
        if let Some(why) = self.cancel.reason() {
            self.rt
                .abort_run(&id, agent, &format!("cancelled with its workflow: {why}"));
        }
        let r = fut.await;
        self.cancel
            .inflight
            .lock()
            .expect("cancel lock")
            .remove(&id);
        Ok(r)
    }

    /// Runs one step with its retries; the error says which step failed and why.
    async fn call(
        &self,
        label: String,
        step: &Step,
        default: &str,
        vars: &Vars,
    ) -> Result<String, String> {
        let input = render(step.input.as_deref().unwrap_or(default), vars);
        let attempts = step.retries + 1;
        let mut last = String::new();
        for attempt in 1..=attempts {
            if let Some(why) = self.cancel.reason() {
                return Err(format!(
                    "{label} ({}) not run: cancelled: {why}",
                    step.agent
                ));
            }
            let mut rec = StepRecord {
                label: label.clone(),
                agent: step.agent.clone(),
                attempt,
                pass: self.pass.load(Ordering::SeqCst),
                run_id: None,
                succeeded: false,
                input: input.clone(),
                output: None,
                error: None,
                models: Vec::new(),
            };
            match self.run_agent(&step.agent, input.clone()).await {
                Ok(r) => {
                    rec.run_id = Some(r.id.clone());
                    rec.models = r.usage.models.clone();
                    if r.status == RunStatus::Succeeded {
                        let out = r.output.unwrap_or_default();
                        rec.succeeded = true;
                        rec.output = Some(out.clone());
                        self.record(rec);
                        return Ok(out);
                    }
                    last = format!(
                        "run {} ended {:?}: {}",
                        r.id,
                        r.status,
                        r.error.unwrap_or_default()
                    );
                }
                Err(e) => last = e.to_string(),
            }
            rec.error = Some(last.clone());
            self.record(rec);
        }
        Err(format!(
            "{label} ({}) failed after {attempts} attempt{}: {last}",
            step.agent,
            if attempts > 1 { "s" } else { "" }
        ))
    }

    /// Runs calls concurrently; results in declaration order (none for failed branches in
    /// best-effort mode).
    async fn fan(
        self: &Arc<Self>,
        calls: Vec<Call>,
        failure: Failure,
    ) -> Result<Vec<Option<String>>, String> {
        let n = calls.len();
        let mut set = tokio::task::JoinSet::new();
        for (i, (label, step, default, vars)) in calls.into_iter().enumerate() {
            let me = self.clone();
            set.spawn(async move { (i, me.call(label, &step, default, &vars).await) });
        }
        let mut results: Vec<Option<String>> = vec![None; n];
        let mut errors = Vec::new();
        let mut first: Option<(usize, String)> = None;
        while let Some(joined) = set.join_next().await {
            let (i, r) = joined.map_err(|e| format!("a branch panicked: {e}"))?;
            match r {
                Ok(o) => results[i] = Some(o),
                // The first failure decides; branches already running are awaited so that
                // their runs are recorded and nothing outlives the workflow.
                Err(e) if failure.mode == FailureMode::FailFast => {
                    first.get_or_insert((i, e));
                }
                Err(e) => errors.push((i, e)),
            }
        }
        if let Some((_, e)) = first {
            return Err(e);
        }
        let ok = results.iter().filter(|r| r.is_some()).count();
        let quorum = failure.quorum.unwrap_or(1) as usize;
        if ok < quorum {
            errors.sort_by_key(|(i, _)| *i);
            let why: Vec<String> = errors.into_iter().map(|(_, e)| e).collect();
            return Err(format!(
                "only {ok} of {n} branches succeeded, {quorum} needed: {}",
                why.join("; ")
            ));
        }
        Ok(results)
    }

    async fn topology(self: &Arc<Self>, t: &Topology, input: &str) -> Result<String, String> {
        let fail_fast = Failure::default();
        match t {
            Topology::Sequential { steps } => {
                let mut prev = input.to_string();
                for (i, s) in steps.iter().enumerate() {
                    let v = vars(&[
                        ("input", input),
                        ("previous", &prev),
                        ("index", &i.to_string()),
                    ]);
                    prev = self
                        .call(format!("steps[{i}]"), s, "{previous}", &v)
                        .await?;
                }
                Ok(prev)
            }
            Topology::Parallel {
                branches,
                aggregator,
                failure,
            } => {
                let calls = branches
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        let v = vars(&[("input", input), ("index", &i.to_string())]);
                        (format!("branches[{i}]"), s.clone(), "{input}", v)
                    })
                    .collect();
                let outs: Vec<String> = self
                    .fan(calls, *failure)
                    .await?
                    .into_iter()
                    .flatten()
                    .collect();
                match aggregator {
                    Some(a) => {
                        let v = vars(&[("input", input), ("outputs", &join(&outs))]);
                        self.call("aggregator".into(), a, "{outputs}", &v).await
                    }
                    None => Ok(join(&outs)),
                }
            }
            Topology::Dag { nodes, output } => {
                // Each node starts as soon as its dependencies have finished; fail-fast.
                let mut done: HashMap<String, String> = HashMap::new();
                let mut started: Vec<&str> = Vec::new();
                let mut set = tokio::task::JoinSet::new();
                let mut failed: Option<String> = None;
                loop {
                    let ready: Vec<&super::Node> = nodes
                        .iter()
                        .filter(|n| {
                            failed.is_none()
                                && !started.contains(&n.id.as_str())
                                && n.after.iter().all(|a| done.contains_key(a))
                        })
                        .collect();
                    for n in ready {
                        let mut v = vars(&[("input", input)]);
                        for (id, o) in &done {
                            v.insert(format!("out.{id}"), o.clone());
                        }
                        let deps: Vec<String> = n.after.iter().map(|a| done[a].clone()).collect();
                        v.insert("outputs".into(), join(&deps));
                        let step = Step {
                            agent: n.agent.clone(),
                            input: n.input.clone(),
                            retries: n.retries,
                        };
                        let default = if n.after.is_empty() {
                            "{input}"
                        } else {
                            "{outputs}"
                        };
                        started.push(&n.id);
                        let (me, id) = (self.clone(), n.id.clone());
                        set.spawn(async move {
                            let r = me.call(format!("node {id}"), &step, default, &v).await;
                            (id, r)
                        });
                    }
                    let Some(joined) = set.join_next().await else {
                        break;
                    };
                    match joined.map_err(|e| format!("a node panicked: {e}"))? {
                        (id, Ok(o)) => {
                            done.insert(id, o);
                        }
                        // No new node starts; running ones are awaited and recorded.
                        (_, Err(e)) => {
                            failed.get_or_insert(e);
                        }
                    }
                }
                if let Some(e) = failed {
                    return Err(e);
                }
                if done.len() < nodes.len() {
                    return Err("dag: some nodes never became ready (cycle)".into());
                }
                Ok(match output {
                    Some(o) => done[o].clone(),
                    None => {
                        let sinks: Vec<String> = nodes
                            .iter()
                            .filter(|n| !nodes.iter().any(|m| m.after.contains(&n.id)))
                            .map(|n| done[&n.id].clone())
                            .collect();
                        join(&sinks)
                    }
                })
            }
            Topology::Conditional {
                check,
                cases,
                otherwise,
            } => {
                let probe = match check {
                    Some(c) => {
                        self.call("check".into(), c, "{input}", &vars(&[("input", input)]))
                            .await?
                    }
                    None => input.to_string(),
                };
                let v = vars(&[("input", input), ("previous", &probe)]);
                for (i, c) in cases.iter().enumerate() {
                    if c.when.matches(&probe) {
                        return self
                            .call(format!("cases[{i}]"), &c.step, "{input}", &v)
                            .await;
                    }
                }
                match otherwise {
                    Some(s) => self.call("otherwise".into(), s, "{input}", &v).await,
                    None => Err("conditional: no case matched and there is no `otherwise`".into()),
                }
            }
            Topology::Loop {
                body,
                until,
                max_iterations,
                fail_if_exhausted,
            } => {
                let mut prev = input.to_string();
                for it in 1..=*max_iterations {
                    let v = vars(&[
                        ("input", input),
                        ("previous", &prev),
                        ("iteration", &it.to_string()),
                    ]);
                    prev = self
                        .call(format!("iteration {it}"), body, "{previous}", &v)
                        .await?;
                    if until.as_ref().is_some_and(|u| u.matches(&prev)) {
                        return Ok(prev);
                    }
                }
                if until.is_some() && *fail_if_exhausted {
                    return Err(format!(
                        "loop: `until` did not match within {max_iterations} iterations"
                    ));
                }
                Ok(prev)
            }
            Topology::Hierarchical {
                manager,
                workers,
                synthesis,
                failure,
            } => {
                let plan = self
                    .call(
                        "manager".into(),
                        manager,
                        "{input}",
                        &vars(&[("input", input)]),
                    )
                    .await?;
                let mut calls: Vec<Call> = Vec::new();
                for line in plan.lines() {
                    let Some((who, task)) = line.split_once(':') else {
                        continue;
                    };
                    let who = who.trim().trim_start_matches('@');
                    if let Some(w) = workers.iter().find(|w| w.agent == who) {
                        let v = vars(&[("input", input), ("plan", &plan), ("task", task.trim())]);
                        calls.push((
                            format!("delegate[{}] {who}", calls.len()),
                            w.clone(),
                            "{task}",
                            v,
                        ));
                    }
                }
                if calls.is_empty() {
                    // The manager answered without delegating.
                    return Ok(plan);
                }
                let outs: Vec<String> = self
                    .fan(calls, *failure)
                    .await?
                    .into_iter()
                    .flatten()
                    .collect();
                let step = Step {
                    agent: manager.agent.clone(),
                    input: Some(synthesis.clone().unwrap_or_else(|| "{outputs}".into())),
                    retries: manager.retries,
                };
                let v = vars(&[("input", input), ("plan", &plan), ("outputs", &join(&outs))]);
                self.call("manager synthesis".into(), &step, "", &v).await
            }
            Topology::Debate {
                debaters,
                rounds,
                judge,
            } => {
                let mut transcript: Vec<String> = Vec::new();
                let mut last: Vec<String> = vec![String::new(); debaters.len()];
                for r in 1..=*rounds {
                    let t = transcript.join("\n");
                    let calls = debaters
                        .iter()
                        .enumerate()
                        .map(|(i, s)| {
                            let v = vars(&[
                                ("input", input),
                                ("transcript", &t),
                                ("round", &r.to_string()),
                                ("previous", &last[i]),
                            ]);
                            let default = if r == 1 {
                                "{input}"
                            } else {
                                "{input}\n{transcript}"
                            };
                            (format!("round {r} debaters[{i}]"), s.clone(), default, v)
                        })
                        .collect();
                    let outs = self.fan(calls, fail_fast).await?;
                    for (i, o) in outs.into_iter().enumerate() {
                        let o = o.unwrap_or_default();
                        transcript.push(format!("{}: {o}", debaters[i].agent));
                        last[i] = o;
                    }
                }
                let v = vars(&[("input", input), ("transcript", &transcript.join("\n"))]);
                self.call("judge".into(), judge, "{input}\n{transcript}", &v)
                    .await
            }
            Topology::Mixture {
                proposers,
                aggregator,
                layers,
                failure,
            } => {
                let mut outs: Vec<String> = Vec::new();
                for layer in 1..=*layers {
                    let prev = join(&outs);
                    let calls = proposers
                        .iter()
                        .enumerate()
                        .map(|(i, s)| {
                            let v = vars(&[
                                ("input", input),
                                ("outputs", &prev),
                                ("layer", &layer.to_string()),
                            ]);
                            let default = if layer == 1 {
                                "{input}"
                            } else {
                                "{input}\n{outputs}"
                            };
                            (
                                format!("layer {layer} proposers[{i}]"),
                                s.clone(),
                                default,
                                v,
                            )
                        })
                        .collect();
                    outs = self
                        .fan(calls, *failure)
                        .await?
                        .into_iter()
                        .flatten()
                        .collect();
                }
                let v = vars(&[("input", input), ("outputs", &join(&outs))]);
                self.call("aggregator".into(), aggregator, "{outputs}", &v)
                    .await
            }
            Topology::Voting {
                voters,
                extract,
                min_votes,
                failure,
            } => {
                let calls = voters
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        (
                            format!("voters[{i}]"),
                            s.clone(),
                            "{input}",
                            vars(&[("input", input)]),
                        )
                    })
                    .collect();
                let outs = self.fan(calls, *failure).await?;
                let re = extract.as_deref().and_then(|r| regex::Regex::new(r).ok());
                // (normalised vote, count, first spelling), in first-seen order.
                let mut tally: Vec<(String, usize, String)> = Vec::new();
                for o in outs.iter().flatten() {
                    let vote = match &re {
                        Some(re) => match re.captures(o) {
                            Some(c) => c
                                .get(1)
                                .or_else(|| c.get(0))
                                .map(|m| m.as_str().trim().to_string()),
                            None => None,
                        },
                        None => Some(o.trim().to_string()),
                    };
                    let Some(vote) = vote else { continue };
                    let key = vote.to_lowercase();
                    match tally.iter_mut().find(|t| t.0 == key) {
                        Some(t) => t.1 += 1,
                        None => tally.push((key, 1, vote)),
                    }
                }
                let best = tally.iter().map(|t| t.1).max().unwrap_or(0);
                let need = min_votes
                    .map(|m| m as usize)
                    .unwrap_or(voters.len() / 2 + 1);
                let top: Vec<&(String, usize, String)> =
                    tally.iter().filter(|t| t.1 == best).collect();
                if top.len() > 1 {
                    let names: Vec<String> = top.iter().map(|t| format!("{:?}", t.2)).collect();
                    return Err(format!(
                        "voting: no consensus: a tie between {} with {best} votes each",
                        names.join(" and ")
                    ));
                }
                match top.first() {
                    Some(t) if t.1 >= need => Ok(t.2.clone()),
                    Some(t) => Err(format!(
                        "voting: no consensus: {:?} has {} of {} votes, {need} needed",
                        t.2,
                        t.1,
                        voters.len()
                    )),
                    None => Err("voting: no voter gave a vote".into()),
                }
            }
            Topology::MapReduce {
                mapper,
                reducer,
                separator,
                failure,
            } => {
                let sep = separator.as_deref().unwrap_or("\n");
                let items: Vec<&str> = input
                    .split(sep)
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect();
                if items.is_empty() {
                    return Err("map-reduce: the input has no items".into());
                }
                if items.len() > super::MAX_FAN {
                    return Err(format!(
                        "map-reduce: the input has {} items, more than {}",
                        items.len(),
                        super::MAX_FAN
                    ));
                }
                let calls = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        let v =
                            vars(&[("input", input), ("item", item), ("index", &i.to_string())]);
                        (format!("map[{i}]"), mapper.clone(), "{item}", v)
                    })
                    .collect();
                let outs: Vec<String> = self
                    .fan(calls, *failure)
                    .await?
                    .into_iter()
                    .flatten()
                    .collect();
                let v = vars(&[("input", input), ("outputs", &join(&outs))]);
                self.call("reducer".into(), reducer, "{outputs}", &v).await
            }
            Topology::Reflection {
                generator,
                critic,
                reviser,
                rounds,
                stop_when,
            } => {
                let mut draft = self
                    .call(
                        "generator".into(),
                        generator,
                        "{input}",
                        &vars(&[("input", input)]),
                    )
                    .await?;
                let reviser = reviser.clone().unwrap_or_else(|| Step {
                    agent: generator.agent.clone(),
                    input: None,
                    retries: generator.retries,
                });
                for r in 1..=*rounds {
                    let round = r.to_string();
                    let v = vars(&[("input", input), ("draft", &draft), ("round", &round)]);
                    let critique = self
                        .call(format!("round {r} critic"), critic, "{draft}", &v)
                        .await?;
                    if stop_when.as_ref().is_some_and(|m| m.matches(&critique)) {
                        break;
                    }
                    let v = vars(&[
                        ("input", input),
                        ("draft", &draft),
                        ("critique", &critique),
                        ("round", &round),
                    ]);
                    draft = self
                        .call(
                            format!("round {r} reviser"),
                            &reviser,
                            "{draft}\n{critique}",
                            &v,
                        )
                        .await?;
                }
                Ok(draft)
            }
            Topology::Broadcast {
                agents,
                rounds,
                failure,
            } => {
                let mut last: Vec<Option<String>> = vec![None; agents.len()];
                for r in 1..=*rounds {
                    let all: Vec<String> = last.iter().flatten().cloned().collect();
                    let all = join(&all);
                    let calls = agents
                        .iter()
                        .enumerate()
                        .map(|(i, s)| {
                            let v = vars(&[
                                ("input", input),
                                ("outputs", &all),
                                ("round", &r.to_string()),
                                ("previous", last[i].as_deref().unwrap_or("")),
                            ]);
                            let default = if r == 1 { "{input}" } else { "{outputs}" };
                            (format!("round {r} agents[{i}]"), s.clone(), default, v)
                        })
                        .collect();
                    last = self.fan(calls, *failure).await?;
                }
                let outs: Vec<String> = last.into_iter().flatten().collect();
                Ok(join(&outs))
            }
            Topology::Star {
                hub,
                spokes,
                synthesis,
                failure,
            } => {
                let msg = self
                    .call("hub".into(), hub, "{input}", &vars(&[("input", input)]))
                    .await?;
                let calls = spokes
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        let v = vars(&[("input", input), ("previous", &msg)]);
                        (format!("spokes[{i}]"), s.clone(), "{previous}", v)
                    })
                    .collect();
                let outs: Vec<String> = self
                    .fan(calls, *failure)
                    .await?
                    .into_iter()
                    .flatten()
                    .collect();
                let step = Step {
                    agent: hub.agent.clone(),
                    input: Some(synthesis.clone().unwrap_or_else(|| "{outputs}".into())),
                    retries: hub.retries,
                };
                let v = vars(&[
                    ("input", input),
                    ("previous", &msg),
                    ("outputs", &join(&outs)),
                ]);
                self.call("hub synthesis".into(), &step, "", &v).await
            }
            Topology::RoundRobin { agents, turns } => {
                let mut transcript: Vec<String> = Vec::new();
                let mut prev = input.to_string();
                for t in 0..*turns as usize {
                    let i = t % agents.len();
                    let s = &agents[i];
                    let v = vars(&[
                        ("input", input),
                        ("previous", &prev),
                        ("transcript", &transcript.join("\n")),
                        ("turn", &(t + 1).to_string()),
                    ]);
                    prev = self
                        .call(format!("turn {} agents[{i}]", t + 1), s, "{previous}", &v)
                        .await?;
                    transcript.push(format!("{}: {prev}", s.agent));
                }
                Ok(prev)
            }
        }
    }

    /// Judges an output, stores the judgement and feeds its score to the router for every
    /// model the producing steps used.
    async fn judge(
        &self,
        wf: &Workflow,
        target: String,
        pass: u32,
        input: &str,
        output: &str,
    ) -> Judgement {
        let spec = wf.judge.as_ref().expect("judged workflows have judges");
        let id = self.run.lock().expect("lock").id.clone();
        let j = spec
            .judge(self.rt.services().as_ref(), &id, target, input, output)
            .await;
        if let Some(score) = j.score {
            let kind = wf.task_kind.clone().unwrap_or_else(|| wf.name.clone());
            let mut models: Vec<String> = Vec::new();
            for s in self.run.lock().expect("lock").steps.iter() {
                if s.pass == pass && s.succeeded {
                    for m in &s.models {
                        if !models.contains(m) {
                            models.push(m.clone());
                        }
                    }
                }
            }
            for m in models {
                self.rt.services().record_score(&m, &kind, score);
            }
        }
        self.run.lock().expect("lock").judgements.push(j.clone());
        self.save(false);
        j
    }
}

enum End {
    Ok(String),
    Failed(String),
    Rejected(String, Vec<String>),
    Cancelled(String),
}

/// Stores a new workflow run and returns its id with the future that executes it.
pub(super) fn start(
    rt: Runtime,
    wf: Workflow,
    input: String,
) -> (
    String,
    impl std::future::Future<Output = WorkflowRun> + Send + 'static,
) {
    let run = WorkflowRun {
        id: new_id(),
        workflow: wf.name.clone(),
        kind: wf.topology.kind().into(),
        status: WorkflowStatus::Running,
        input: input.clone(),
        output: None,
        error: None,
        steps: Vec::new(),
        judgements: Vec::new(),
        rerouted_to: None,
        created_ms: now_ms(),
        finished_ms: None,
    };
    let id = run.id.clone();
    let cancel = Arc::new(Cancel::default());
    rt.register_workflow(&id, cancel.clone());
    let ctx = Arc::new(Ctx {
        rt,
        run: Mutex::new(run),
        pass: AtomicU32::new(1),
        cancel,
    });
    ctx.save(false);
    (id, execute(ctx, wf, input))
}

async fn execute(ctx: Arc<Ctx>, wf: Workflow, input: String) -> WorkflowRun {
    let run_id = ctx.run.lock().expect("lock").id.clone();
    let mut pass = 1;
    let cancelled = || ctx.cancel.reason().map(End::Cancelled);
    let end = loop {
        ctx.pass.store(pass, Ordering::SeqCst);
        let out = ctx.topology(&wf.topology, &input).await;
        if let Some(c) = cancelled() {
            break c;
        }
        let out = match out {
            Ok(o) => o,
            Err(e) => break End::Failed(e),
        };
        let Some(spec) = &wf.judge else {
            break End::Ok(out);
        };
        let j = ctx
            .judge(&wf, format!("pass {pass}"), pass, &input, &out)
            .await;
        if let Some(c) = cancelled() {
            break c;
        }
        if j.passed {
            break End::Ok(out);
        }
        match spec.on_fail {
            OnFail::Retry if pass <= spec.retries => pass += 1,
            OnFail::Reroute => {
                let alt = spec.alternate.as_ref().expect("validated");
                pass += 1;
                ctx.pass.store(pass, Ordering::SeqCst);
                let v = vars(&[
                    ("input", &input),
                    ("output", &out),
                    ("reasons", &j.reasons.join("; ")),
                ]);
                let out = match ctx.call("reroute".into(), alt, "{input}", &v).await {
                    Ok(o) => o,
                    Err(e) => break End::Failed(format!("re-routing failed: {e}")),
                };
                ctx.run.lock().expect("lock").rerouted_to = Some(alt.agent.clone());
                let j = ctx.judge(&wf, "reroute".into(), pass, &input, &out).await;
                break if j.passed {
                    End::Ok(out)
                } else {
                    End::Rejected(out, j.reasons)
                };
            }
            _ => break End::Rejected(out, j.reasons),
        }
    };
    {
        let mut run = ctx.run.lock().expect("lock");
        match end {
            End::Ok(o) => {
                run.status = WorkflowStatus::Succeeded;
                run.output = Some(o);
            }
            End::Failed(e) => {
                run.status = WorkflowStatus::Failed;
                run.error = Some(e);
            }
            End::Rejected(o, reasons) => {
                run.status = WorkflowStatus::Rejected;
                run.output = Some(o);
                run.error = Some(format!("rejected by the judges: {}", reasons.join("; ")));
            }
            End::Cancelled(why) => {
                run.status = WorkflowStatus::Cancelled;
                run.error = Some(format!("cancelled: {why}"));
            }
        }
        run.finished_ms = Some(now_ms());
    }
    ctx.save(true);
    ctx.rt.unregister_workflow(&run_id);
    ctx.run.lock().expect("lock").clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_replace_known_variables_only() {
        let v = vars(&[("input", "hi"), ("outputs", "a\n\nb")]);
        assert_eq!(render("{input}: {outputs}", &v), "hi: a\n\nb");
        assert_eq!(
            render("{\"x\": {input}} {unknown}", &v),
            "{\"x\": hi} {unknown}"
        );
        assert_eq!(render("{{input}}", &v), "{hi}");
    }
}
