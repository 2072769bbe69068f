//! Researcher: recalls what memory holds about a question and answers from it.
//! Input: the question. Memory namespace: `agent:researcher`.
use cairn_agent_sdk::{Agent, Task, agent, llm, log, memory};

const NS: &str = "agent:researcher";

#[derive(Default)]
struct Researcher;

impl Agent for Researcher {
    fn run(&mut self, task: Task) -> Result<String, String> {
        let hits = memory::recall(NS, &task.input, 5).map_err(|e| e.to_string())?;
        log::info(&format!("{} notes recalled", hits.len()));
        let notes: Vec<String> = hits.iter().map(|h| format!("- {}", h.text)).collect();
        let prompt = format!(
            "Notes:\n{}\n\nUsing only the notes, answer briefly: {}",
            notes.join("\n"),
            task.input
        );
        let answer = llm::ask_with("You are a careful researcher.", &prompt, 96)
            .map_err(|e| e.to_string())?;
        let meta = serde_json::json!({"question": task.input, "run": task.id});
        memory::remember(NS, "episodic", &format!("Answered: {answer}"), &meta)
            .map_err(|e| e.to_string())?;
        Ok(answer)
    }
}

agent!(Researcher);
