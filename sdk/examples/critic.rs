//! Critic: scores a draft from 1 to 10 and says what to improve, as JSON.
use cairn_agent_sdk::{Agent, Task, agent, llm};

#[derive(Default)]
struct Critic;

impl Agent for Critic {
    fn run(&mut self, task: Task) -> Result<String, String> {
        let reply = llm::ask_with(
            "You are a strict reviewer. Reply with a score from 1 to 10, then one sentence of critique.",
            &task.input,
            64,
        )
        .map_err(|e| e.to_string())?;
        let score = reply
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|d| d.parse::<u32>().ok())
            .find(|n| (1..=10).contains(n))
            .unwrap_or(5);
        Ok(serde_json::json!({"score": score, "critique": reply.trim()}).to_string())
    }
}

agent!(Critic);
