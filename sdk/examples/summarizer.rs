//! Summarizer: a short summary of the input text, streamed from the model.
use cairn_agent_sdk::{Agent, Task, agent, llm};

#[derive(Default)]
struct Summarizer;

impl Agent for Summarizer {
    fn run(&mut self, task: Task) -> Result<String, String> {
        if task.input.trim().is_empty() {
            return Err("nothing to summarize".into());
        }
        let mut request = llm::request(vec![
            llm::message(
                "system",
                "Summarize the user's text in one or two sentences.",
            ),
            llm::message("user", task.input),
        ]);
        request.max_tokens = Some(80);
        let text = llm::stream(&request, |_| {}).map_err(|e| e.to_string())?;
        Ok(text.trim().to_string())
    }
}

agent!(Summarizer);
