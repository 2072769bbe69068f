//! Workflows: topologies of agents declared in a file (TOML or JSON) and run by the runtime,
//! with a judge pipeline on the final output. Agents only see text in and text out; the
//! engine composes each call's input from a template (`{input}`, `{previous}`, `{outputs}`,
//! ...). See `docs/workflows.md` for every topology's semantics.

mod exec;
pub mod judge;

pub(crate) use exec::Cancel;

pub use judge::{Judge, JudgeSpec, Judgement, OnFail, Verdict};

use crate::manifest::valid_name;
use crate::runtime::{AgentError, Runtime};
use serde::{Deserialize, Serialize};

/// Most steps, branches, nodes or map items in one workflow level.
pub const MAX_FAN: usize = 256;
/// Most rounds, turns, iterations or layers.
pub const MAX_ROUNDS: u32 = 100;

/// A workflow file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    /// Name: 1–64 of `a-z`, `0-9`, `-`, starting with a letter.
    pub name: String,
    /// One line for people.
    #[serde(default)]
    pub description: String,
    /// Kind of task, for judge scores fed to the router (default: the workflow's name).
    #[serde(default)]
    pub task_kind: Option<String>,
    /// How the agents are composed.
    pub topology: Topology,
    /// Judges of the final output.
    #[serde(default)]
    pub judge: Option<JudgeSpec>,
}

/// One call of an agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Installed agent name.
    pub agent: String,
    /// Input template; each topology documents its default and its variables.
    #[serde(default)]
    pub input: Option<String>,
    /// Extra attempts after a failed run.
    #[serde(default)]
    pub retries: u32,
}

/// What a fan-out does when branches fail.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FailureMode {
    /// The first failed branch (after its retries) fails the workflow.
    #[default]
    FailFast,
    /// Failed branches are dropped; the workflow fails only below the quorum.
    BestEffort,
}

/// Failure semantics of a fan-out.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    /// Fail fast or best effort.
    #[serde(default)]
    pub mode: FailureMode,
    /// Successful branches needed in best-effort mode (default 1).
    #[serde(default)]
    pub quorum: Option<u32>,
}

/// A test on text: exactly one of `contains` (case-insensitive) or `regex`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// Substring, compared case-insensitively.
    #[serde(default)]
    pub contains: Option<String>,
    /// Regular expression.
    #[serde(default)]
    pub regex: Option<String>,
}

impl Match {
    fn check(&self, at: &str) -> Result<(), String> {
        match (&self.contains, &self.regex) {
            (Some(_), None) => Ok(()),
            (None, Some(r)) => regex::Regex::new(r)
                .map(|_| ())
                .map_err(|e| format!("{at}: bad regex: {e}")),
            _ => Err(format!("{at}: give exactly one of `contains` or `regex`")),
        }
    }

    /// Whether `text` matches.
    pub fn matches(&self, text: &str) -> bool {
        if let Some(c) = &self.contains {
            return text.to_lowercase().contains(&c.to_lowercase());
        }
        self.regex
            .as_deref()
            .and_then(|r| regex::Regex::new(r).ok())
            .is_some_and(|r| r.is_match(text))
    }
}

/// A node of a DAG.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Unique id, referenced by `after` and `{out.ID}`.
    pub id: String,
    /// Installed agent name.
    pub agent: String,
    /// Input template.
    #[serde(default)]
    pub input: Option<String>,
    /// Extra attempts after a failed run.
    #[serde(default)]
    pub retries: u32,
    /// Nodes that must finish first.
    #[serde(default)]
    pub after: Vec<String>,
}

/// One case of a conditional.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// The test on the checked text.
    pub when: Match,
    /// What runs when it matches.
    pub step: Step,
}

/// How agents are composed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Topology {
    /// Steps one after another; each gets the previous output.
    Sequential {
        /// The steps.
        steps: Vec<Step>,
    },
    /// Fan-out of the input to branches, fan-in of their outputs.
    Parallel {
        /// The branches.
        branches: Vec<Step>,
        /// Combines `{outputs}`; without it the output is the joined outputs.
        #[serde(default)]
        aggregator: Option<Step>,
        /// Failure semantics.
        #[serde(default)]
        failure: Failure,
    },
    /// Nodes with dependencies, run in waves as their dependencies finish.
    Dag {
        /// The nodes.
        nodes: Vec<Node>,
        /// The node whose output is the result (default: the sinks' outputs joined).
        #[serde(default)]
        output: Option<String>,
    },
    /// Picks one step by testing the input (or a check step's output).
    Conditional {
        /// Optional classifier whose output is tested instead of the input.
        #[serde(default)]
        check: Option<Step>,
        /// Cases, tested in order.
        cases: Vec<Case>,
        /// Runs when no case matches; without it that is a failure.
        #[serde(default)]
        otherwise: Option<Step>,
    },
    /// One step repeated on its own output until a test matches.
    Loop {
        /// The repeated step.
        body: Step,
        /// Stops when the output matches.
        #[serde(default)]
        until: Option<Match>,
        /// Most iterations.
        max_iterations: u32,
        /// Fail when `until` never matched (default: the last output stands).
        #[serde(default)]
        fail_if_exhausted: bool,
    },
    /// A manager plans (`worker: subtask` lines), workers do, the manager synthesises.
    Hierarchical {
        /// The manager.
        manager: Step,
        /// Workers the manager may delegate to.
        workers: Vec<Step>,
        /// Template of the manager's synthesis call (default `{outputs}`).
        #[serde(default)]
        synthesis: Option<String>,
        /// Failure semantics of the delegated subtasks.
        #[serde(default)]
        failure: Failure,
    },
    /// Debaters answer for N rounds, each seeing the transcript; a judge decides.
    Debate {
        /// The debaters.
        debaters: Vec<Step>,
        /// Rounds.
        rounds: u32,
        /// Reads the transcript and gives the result.
        judge: Step,
    },
    /// Proposers answer in parallel (optionally in layers); an aggregator combines.
    Mixture {
        /// The proposers.
        proposers: Vec<Step>,
        /// Combines the last layer's `{outputs}`.
        aggregator: Step,
        /// Layers of proposers (default 1).
        #[serde(default = "one")]
        layers: u32,
        /// Failure semantics per layer.
        #[serde(default)]
        failure: Failure,
    },
    /// Voters answer in parallel; the most common answer wins if it has enough votes.
    Voting {
        /// The voters.
        voters: Vec<Step>,
        /// Regex whose first group (or whole match) is the vote (default: the trimmed output).
        #[serde(default)]
        extract: Option<String>,
        /// Votes the winner needs (default: a strict majority of all voters).
        #[serde(default)]
        min_votes: Option<u32>,
        /// Failure semantics.
        #[serde(default)]
        failure: Failure,
    },
    /// Splits the input, maps each item in parallel, reduces the outputs.
    MapReduce {
        /// Runs once per item.
        mapper: Step,
        /// Combines `{outputs}`.
        reducer: Step,
        /// Item separator (default a newline); items are trimmed, empty ones dropped.
        #[serde(default)]
        separator: Option<String>,
        /// Failure semantics of the map.
        #[serde(default)]
        failure: Failure,
    },
    /// Generate, then critique and revise for N rounds.
    Reflection {
        /// Writes the first draft.
        generator: Step,
        /// Critiques `{draft}`.
        critic: Step,
        /// Revises (default: the generator's agent with `{draft}\n{critique}`).
        #[serde(default)]
        reviser: Option<Step>,
        /// Critique–revise rounds.
        rounds: u32,
        /// Stops early when the critique matches (e.g. "approved").
        #[serde(default)]
        stop_when: Option<Match>,
    },
    /// Every agent gets the input; in later rounds every agent sees all outputs (mesh).
    Broadcast {
        /// The agents.
        agents: Vec<Step>,
        /// Rounds (default 1).
        #[serde(default = "one")]
        rounds: u32,
        /// Failure semantics per round.
        #[serde(default)]
        failure: Failure,
    },
    /// A hub sends its output to every spoke and combines their answers.
    Star {
        /// The hub.
        hub: Step,
        /// The spokes.
        spokes: Vec<Step>,
        /// Template of the hub's combining call (default `{outputs}`).
        #[serde(default)]
        synthesis: Option<String>,
        /// Failure semantics of the spokes.
        #[serde(default)]
        failure: Failure,
    },
    /// Agents take turns in a fixed order on a shared conversation.
    RoundRobin {
        /// The agents, in turn order.
        agents: Vec<Step>,
        /// Total turns.
        turns: u32,
    },
}

fn one() -> u32 {
    1
}

impl Topology {
    /// The kind's name as written in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            Topology::Sequential { .. } => "sequential",
            Topology::Parallel { .. } => "parallel",
            Topology::Dag { .. } => "dag",
            Topology::Conditional { .. } => "conditional",
            Topology::Loop { .. } => "loop",
            Topology::Hierarchical { .. } => "hierarchical",
            Topology::Debate { .. } => "debate",
            Topology::Mixture { .. } => "mixture",
            Topology::Voting { .. } => "voting",
            Topology::MapReduce { .. } => "map-reduce",
            Topology::Reflection { .. } => "reflection",
            Topology::Broadcast { .. } => "broadcast",
            Topology::Star { .. } => "star",
            Topology::RoundRobin { .. } => "round-robin",
        }
    }

    /// Every step with where it is declared, for validation.
    fn steps(&self) -> Vec<(String, &Step)> {
        let mut out: Vec<(String, &Step)> = Vec::new();
        match self {
            Topology::Sequential { steps } => named(&mut out, "steps", steps),
            Topology::Parallel {
                branches,
                aggregator,
                ..
            } => {
                named(&mut out, "branches", branches);
                opt(&mut out, "aggregator", aggregator);
            }
            Topology::Dag { .. } => {}
            Topology::Conditional {
                check,
                cases,
                otherwise,
            } => {
                opt(&mut out, "check", check);
                for (i, c) in cases.iter().enumerate() {
                    out.push((format!("cases[{i}].step"), &c.step));
                }
                opt(&mut out, "otherwise", otherwise);
            }
            Topology::Loop { body, .. } => out.push(("body".into(), body)),
            Topology::Hierarchical {
                manager, workers, ..
            } => {
                out.push(("manager".into(), manager));
                named(&mut out, "workers", workers);
            }
            Topology::Debate {
                debaters, judge, ..
            } => {
                named(&mut out, "debaters", debaters);
                out.push(("judge".into(), judge));
            }
            Topology::Mixture {
                proposers,
                aggregator,
                ..
            } => {
                named(&mut out, "proposers", proposers);
                out.push(("aggregator".into(), aggregator));
            }
            Topology::Voting { voters, .. } => named(&mut out, "voters", voters),
            Topology::MapReduce {
                mapper, reducer, ..
            } => {
                out.push(("mapper".into(), mapper));
                out.push(("reducer".into(), reducer));
            }
            Topology::Reflection {
                generator,
                critic,
                reviser,
                ..
            } => {
                out.push(("generator".into(), generator));
                out.push(("critic".into(), critic));
                opt(&mut out, "reviser", reviser);
            }
            Topology::Broadcast { agents, .. } | Topology::RoundRobin { agents, .. } => {
                named(&mut out, "agents", agents)
            }
            Topology::Star { hub, spokes, .. } => {
                out.push(("hub".into(), hub));
                named(&mut out, "spokes", spokes);
            }
        }
        out
    }
}

fn named<'a>(out: &mut Vec<(String, &'a Step)>, name: &str, steps: &'a [Step]) {
    for (i, s) in steps.iter().enumerate() {
        out.push((format!("{name}[{i}]"), s));
    }
}

fn opt<'a>(out: &mut Vec<(String, &'a Step)>, name: &str, step: &'a Option<Step>) {
    if let Some(s) = step {
        out.push((name.to_string(), s));
    }
}

fn invalid(name: &str, msg: impl std::fmt::Display) -> AgentError {
    AgentError::Invalid(format!("workflow {name:?}: {msg}"))
}

fn nonempty<T>(name: &str, field: &str, v: &[T]) -> Result<(), AgentError> {
    if v.is_empty() {
        return Err(invalid(name, format!("topology.{field} must not be empty")));
    }
    if v.len() > MAX_FAN {
        return Err(invalid(
            name,
            format!("topology.{field} has more than {MAX_FAN} entries"),
        ));
    }
    Ok(())
}

fn rounds(name: &str, field: &str, n: u32) -> Result<(), AgentError> {
    if n == 0 || n > MAX_ROUNDS {
        return Err(invalid(
            name,
            format!("topology.{field} must be 1..={MAX_ROUNDS}, not {n}"),
        ));
    }
    Ok(())
}

fn failure(name: &str, f: &Failure, branches: usize) -> Result<(), AgentError> {
    if let Some(q) = f.quorum {
        if f.mode == FailureMode::FailFast {
            return Err(invalid(
                name,
                "topology.failure.quorum applies to mode = \"best-effort\" only",
            ));
        }
        if q == 0 || q as usize > branches {
            return Err(invalid(
                name,
                format!("topology.failure.quorum must be 1..={branches}, not {q}"),
            ));
        }
    }
    Ok(())
}

/// The nodes on a cycle of the DAG, if there is one (Kahn's algorithm leaves them over).
fn dag_cycle(nodes: &[Node]) -> Option<Vec<String>> {
    let mut indeg: Vec<usize> = nodes.iter().map(|n| n.after.len()).collect();
    let mut ready: Vec<usize> = (0..nodes.len()).filter(|&i| indeg[i] == 0).collect();
    let mut done = vec![false; nodes.len()];
    while let Some(i) = ready.pop() {
        done[i] = true;
        for (j, n) in nodes.iter().enumerate() {
            let k = n.after.iter().filter(|a| **a == nodes[i].id).count();
            if k > 0 {
                indeg[j] -= k;
                if indeg[j] == 0 {
                    ready.push(j);
                }
            }
        }
    }
    let left: Vec<String> = nodes
        .iter()
        .zip(&done)
        .filter(|(_, d)| !**d)
        .map(|(n, _)| n.id.clone())
        .collect();
    (!left.is_empty()).then_some(left)
}

impl Workflow {
    /// Parses a workflow from TOML or JSON (JSON when the text starts with `{`) and checks it.
    pub fn parse(text: &str) -> Result<Workflow, AgentError> {
        if text.trim_start().starts_with('{') {
            Workflow::from_json(text)
        } else {
            Workflow::from_toml(text)
        }
    }

    /// Parses and checks a TOML workflow.
    pub fn from_toml(text: &str) -> Result<Workflow, AgentError> {
        let wf: Workflow = toml::from_str(text)
            .map_err(|e| AgentError::Invalid(format!("workflow: {}", e.message())))?;
        wf.validate()?;
        Ok(wf)
    }

    /// Parses and checks a JSON workflow.
    pub fn from_json(text: &str) -> Result<Workflow, AgentError> {
        let wf: Workflow = serde_json::from_str(text)
            .map_err(|e| AgentError::Invalid(format!("workflow: {e}")))?;
        wf.validate()?;
        Ok(wf)
    }

    /// Every agent the workflow may call, judges' alternate included, without duplicates.
    pub fn agents(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut add = |a: &str| {
            if !out.iter().any(|x| x == a) {
                out.push(a.to_string());
            }
        };
        for (_, s) in self.topology.steps() {
            add(&s.agent);
        }
        if let Topology::Dag { nodes, .. } = &self.topology {
            for n in nodes {
                add(&n.agent);
            }
        }
        if let Some(alt) = self.judge.as_ref().and_then(|j| j.alternate.as_ref()) {
            add(&alt.agent);
        }
        out
    }

    /// Checks the workflow on its own (no agents looked up); the error names the problem.
    pub fn validate(&self) -> Result<(), AgentError> {
        let name = self.name.as_str();
        if !valid_name(name) {
            return Err(AgentError::Invalid(format!(
                "workflow: name {name:?} must be 1-64 of a-z, 0-9, '-', starting with a letter"
            )));
        }
        for (at, s) in self.topology.steps() {
            if !valid_name(&s.agent) {
                return Err(invalid(
                    name,
                    format!("topology.{at}.agent {:?} is not an agent name", s.agent),
                ));
            }
            if s.retries > 10 {
                return Err(invalid(
                    name,
                    format!("topology.{at}.retries must be 0..=10"),
                ));
            }
        }
        match &self.topology {
            Topology::Sequential { steps } => nonempty(name, "steps", steps)?,
            Topology::Parallel {
                branches,
                failure: f,
                ..
            } => {
                nonempty(name, "branches", branches)?;
                failure(name, f, branches.len())?;
            }
            Topology::Dag { nodes, output } => {
                nonempty(name, "nodes", nodes)?;
                for (i, n) in nodes.iter().enumerate() {
                    if n.id.is_empty() || n.id.len() > 64 {
                        return Err(invalid(
                            name,
                            format!("topology.nodes[{i}].id must be 1-64 bytes"),
                        ));
                    }
                    if nodes[..i].iter().any(|m| m.id == n.id) {
                        return Err(invalid(
                            name,
                            format!("dag: node id {:?} is used twice", n.id),
                        ));
                    }
                    if !valid_name(&n.agent) {
                        return Err(invalid(
                            name,
                            format!(
                                "dag: node {:?}: agent {:?} is not an agent name",
                                n.id, n.agent
                            ),
                        ));
                    }
                    if n.retries > 10 {
                        return Err(invalid(
                            name,
                            format!("dag: node {:?}: retries must be 0..=10", n.id),
                        ));
                    }
                    for a in &n.after {
                        if a == &n.id {
                            return Err(invalid(
                                name,
                                format!("dag: node {:?} depends on itself", n.id),
                            ));
                        }
                        if !nodes.iter().any(|m| &m.id == a) {
                            return Err(invalid(
                                name,
                                format!("dag: node {:?} depends on unknown node {a:?}", n.id),
                            ));
                        }
                    }
                }
                if let Some(cycle) = dag_cycle(nodes) {
                    return Err(invalid(
                        name,
                        format!("dag: cycle through nodes {}", cycle.join(", ")),
                    ));
                }
                if let Some(o) = output
                    && !nodes.iter().any(|n| &n.id == o)
                {
                    return Err(invalid(
                        name,
                        format!("dag: output node {o:?} does not exist"),
                    ));
                }
            }
            Topology::Conditional { cases, .. } => {
                nonempty(name, "cases", cases)?;
                for (i, c) in cases.iter().enumerate() {
                    c.when
                        .check(&format!("topology.cases[{i}].when"))
                        .map_err(|e| invalid(name, e))?;
                }
            }
            Topology::Loop {
                until,
                max_iterations,
                ..
            } => {
                rounds(name, "max_iterations", *max_iterations)?;
                if let Some(u) = until {
                    u.check("topology.until").map_err(|e| invalid(name, e))?;
                }
            }
            Topology::Hierarchical {
                workers,
                failure: f,
                ..
            } => {
                nonempty(name, "workers", workers)?;
                failure(name, f, workers.len())?;
            }
            Topology::Debate {
                debaters,
                rounds: r,
                ..
            } => {
                nonempty(name, "debaters", debaters)?;
                rounds(name, "rounds", *r)?;
            }
            Topology::Mixture {
                proposers,
                layers,
                failure: f,
                ..
            } => {
                nonempty(name, "proposers", proposers)?;
                rounds(name, "layers", *layers)?;
                failure(name, f, proposers.len())?;
            }
            Topology::Voting {
                voters,
                extract,
                min_votes,
                failure: f,
            } => {
                nonempty(name, "voters", voters)?;
                failure(name, f, voters.len())?;
                if let Some(r) = extract {
                    regex::Regex::new(r)
                        .map_err(|e| invalid(name, format!("topology.extract: bad regex: {e}")))?;
                }
                if let Some(m) = min_votes
                    && (*m == 0 || *m as usize > voters.len())
                {
                    return Err(invalid(
                        name,
                        format!("topology.min_votes must be 1..={}, not {m}", voters.len()),
                    ));
                }
            }
            Topology::MapReduce {
                separator,
                failure: f,
                ..
            } => {
                if separator.as_deref() == Some("") {
                    return Err(invalid(name, "topology.separator must not be empty"));
                }
                failure(name, f, MAX_FAN)?;
            }
            Topology::Reflection {
                rounds: r,
                stop_when,
                ..
            } => {
                rounds(name, "rounds", *r)?;
                if let Some(m) = stop_when {
                    m.check("topology.stop_when")
                        .map_err(|e| invalid(name, e))?;
                }
            }
            Topology::Broadcast {
                agents,
                rounds: r,
                failure: f,
            } => {
                nonempty(name, "agents", agents)?;
                rounds(name, "rounds", *r)?;
                failure(name, f, agents.len())?;
            }
            Topology::Star {
                spokes, failure: f, ..
            } => {
                nonempty(name, "spokes", spokes)?;
                failure(name, f, spokes.len())?;
            }
            Topology::RoundRobin { agents, turns } => {
                nonempty(name, "agents", agents)?;
                rounds(name, "turns", *turns)?;
            }
        }
        if let Some(j) = &self.judge {
            j.validate()
                .map_err(|e| invalid(name, format!("judge: {e}")))?;
        }
        Ok(())
    }
}

/// Status of a workflow run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum WorkflowStatus {
    /// In progress.
    Running,
    /// Finished, and the judges (if any) passed the output.
    Succeeded,
    /// A step failed under the topology's failure semantics.
    Failed,
    /// The judges rejected the output (after any retries and re-routing).
    Rejected,
    /// Interrupted by a restart of the appliance.
    Interrupted,
    /// Cancelled by an operator: runs in flight were aborted, no further step started.
    Cancelled,
}

/// One agent call of a workflow run (one attempt).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepRecord {
    /// Where in the topology, e.g. `branches[1]`, `round 2 debaters[0]`, `node b`.
    pub label: String,
    /// Agent.
    pub agent: String,
    /// Attempt, from 1.
    pub attempt: u32,
    /// Workflow attempt this belongs to (1, then retries by the judges; re-routing is last).
    pub pass: u32,
    /// The agent run, when one was created.
    pub run_id: Option<String>,
    /// Whether it succeeded.
    pub succeeded: bool,
    /// Composed input.
    pub input: String,
    /// Output, when it succeeded.
    pub output: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// Models that answered the run's chats.
    #[serde(default)]
    pub models: Vec<String>,
}

/// A workflow run, as stored in `agent_workflow_runs`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkflowRun {
    /// Id (time-ordered, `wf-…`).
    pub id: String,
    /// Workflow name.
    pub workflow: String,
    /// Topology kind.
    pub kind: String,
    /// Status.
    pub status: WorkflowStatus,
    /// Input.
    pub input: String,
    /// Final output, for `succeeded` (and the rejected output, for `rejected`).
    pub output: Option<String>,
    /// Why it failed or was rejected.
    pub error: Option<String>,
    /// Every agent call, in the order they finished.
    pub steps: Vec<StepRecord>,
    /// The judges' verdicts on each judged output, in order.
    pub judgements: Vec<Judgement>,
    /// Agent that produced the final output when the judges re-routed.
    pub rerouted_to: Option<String>,
    /// Created (ms).
    pub created_ms: u64,
    /// Finished (ms).
    pub finished_ms: Option<u64>,
}

/// A workflow definition stored on the appliance (`agent_workflows`), run by name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredWorkflow {
    /// The workflow's name (its key).
    pub name: String,
    /// Its description.
    pub description: String,
    /// Topology kind.
    pub kind: String,
    /// The agents it calls.
    pub agents: Vec<String>,
    /// The file's text as saved (TOML, or JSON).
    pub text: String,
    /// 1 for the first save, then one more for each replacement.
    pub version: u32,
    /// Saved (ms).
    pub saved_ms: u64,
}

/// Longest stored workflow file.
pub const MAX_WORKFLOW_TEXT: usize = 256 << 10;
/// Most stored workflows.
pub const MAX_STORED_WORKFLOWS: usize = 1000;
/// Names that would collide with the API's own paths under `/api/v1/workflows/`.
const RESERVED_NAMES: [&str; 2] = ["runs", "validate"];

impl Runtime {
    /// Checks and stores a workflow definition (replacing one of the same name); it can then
    /// be run by name. Every agent it names must be installed.
    pub fn save_workflow(&self, text: &str) -> Result<StoredWorkflow, AgentError> {
        if text.len() > MAX_WORKFLOW_TEXT {
            return Err(AgentError::Invalid(format!(
                "workflow file is over {} KiB",
                MAX_WORKFLOW_TEXT >> 10
            )));
        }
        let wf = Workflow::parse(text)?;
        if RESERVED_NAMES.contains(&wf.name.as_str()) {
            return Err(AgentError::Invalid(format!(
                "workflow: name {:?} is reserved",
                wf.name
            )));
        }
        self.check_workflow(&wf)?;
        let previous = self.db().stored_workflow(&wf.name)?;
        if previous.is_none() && self.db().stored_workflow_count()? >= MAX_STORED_WORKFLOWS {
            return Err(AgentError::Quota(format!(
                "{MAX_STORED_WORKFLOWS} workflows are stored already; delete one first"
            )));
        }
        let stored = StoredWorkflow {
            name: wf.name.clone(),
            description: wf.description.clone(),
            kind: wf.topology.kind().into(),
            agents: wf.agents(),
            text: text.to_string(),
            version: previous.map_or(1, |p| p.version + 1),
            saved_ms: crate::db::now_ms(),
        };
        self.db().put_stored_workflow(&stored)?;
        Ok(stored)
    }

    /// A stored workflow definition.
    pub fn stored_workflow(&self, name: &str) -> Result<StoredWorkflow, AgentError> {
        self.db()
            .stored_workflow(name)?
            .ok_or_else(|| AgentError::NotFound(format!("no stored workflow {name:?}")))
    }

    /// Every stored workflow definition, by name.
    pub fn stored_workflows(&self) -> Result<Vec<StoredWorkflow>, AgentError> {
        Ok(self.db().stored_workflows()?)
    }

    /// Deletes a stored workflow definition (its past runs stay).
    pub fn delete_workflow(&self, name: &str) -> Result<(), AgentError> {
        if self.db().delete_stored_workflow(name)? {
            Ok(())
        } else {
            Err(AgentError::NotFound(format!("no stored workflow {name:?}")))
        }
    }

    /// Cancels a workflow run in progress: no further step starts, the agent runs in flight
    /// are aborted (they end `killed`), and the run ends `cancelled`. Waits (up to 5 s) for
    /// the end to be recorded. A run that already ended is a conflict.
    pub async fn cancel_workflow(&self, id: &str, reason: &str) -> Result<WorkflowRun, AgentError> {
        let run = self.workflow_run(id)?;
        let ended = |r: &WorkflowRun| {
            AgentError::Conflict(format!(
                "workflow run {id} already ended ({})",
                crate::runtime::state_name(r.status)
            ))
        };
        if run.status != WorkflowStatus::Running {
            return Err(ended(&run));
        }
        let Some(c) = self.workflow_cancel(id) else {
            // It ended between the two reads.
            return Err(ended(&self.workflow_run(id)?));
        };
        c.cancel(self, reason);
        for _ in 0..500 {
            let r = self.workflow_run(id)?;
            if r.status != WorkflowStatus::Running {
                return Ok(r);
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.workflow_run(id)
    }

    /// Checks that every agent the workflow names is installed; the error lists the unknown ones.
    pub fn check_workflow(&self, wf: &Workflow) -> Result<(), AgentError> {
        wf.validate()?;
        let mut unknown = Vec::new();
        for a in wf.agents() {
            if self.db().agent(&a)?.is_none() {
                unknown.push(format!("{a:?}"));
            }
        }
        if !unknown.is_empty() {
            return Err(AgentError::NotFound(format!(
                "workflow {:?}: unknown agent{} {}",
                wf.name,
                if unknown.len() > 1 { "s" } else { "" },
                unknown.join(", ")
            )));
        }
        Ok(())
    }

    /// Runs a workflow to its end (judges included) and stores the run; errors only for a
    /// workflow refused before anything ran.
    pub async fn run_workflow(
        &self,
        wf: &Workflow,
        input: String,
    ) -> Result<WorkflowRun, AgentError> {
        self.check_workflow(wf)?;
        if input.len() > 4 << 20 {
            return Err(AgentError::Invalid("workflow input is over 4 MiB".into()));
        }
        Ok(exec::start(self.clone(), wf.clone(), input).1.await)
    }

    /// Checks a workflow like [`Runtime::run_workflow`], then runs it in the background;
    /// returns the workflow run's id at once (poll [`Runtime::workflow_run`]).
    pub fn submit_workflow(&self, wf: &Workflow, input: String) -> Result<String, AgentError> {
        self.check_workflow(wf)?;
        if input.len() > 4 << 20 {
            return Err(AgentError::Invalid("workflow input is over 4 MiB".into()));
        }
        let (id, fut) = exec::start(self.clone(), wf.clone(), input);
        tokio::spawn(fut);
        Ok(id)
    }

    /// A workflow run.
    pub fn workflow_run(&self, id: &str) -> Result<WorkflowRun, AgentError> {
        self.db()
            .workflow_run(id)?
            .ok_or_else(|| AgentError::NotFound(format!("no workflow run {id:?}")))
    }

    /// Newest workflow runs first, optionally of one workflow.
    pub fn workflow_runs(
        &self,
        workflow: Option<&str>,
        limit: usize,
    ) -> Result<Vec<WorkflowRun>, AgentError> {
        Ok(self.db().workflow_runs(workflow, limit)?)
    }
}
