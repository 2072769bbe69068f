//! Tool user: fetches a URL (from its allow-list), caches it in kv, and summarizes it.
use cairn_agent_sdk::{Agent, Task, agent, http, kv, llm, log};

#[derive(Default)]
struct ToolUser;

impl Agent for ToolUser {
    fn run(&mut self, task: Task) -> Result<String, String> {
        let url = task.input.trim();
        let key = format!("page:{url}");
        let page = match kv::get(&key).map_err(|e| e.to_string())? {
            Some(cached) => cached,
            None => {
                let response = http::get(url).map_err(|e| e.to_string())?;
                if response.status != 200 {
                    return Err(format!("{url} answered {}", response.status));
                }
                kv::set(&key, &response.body).map_err(|e| e.to_string())?;
                response.body
            }
        };
        let text = String::from_utf8_lossy(&page);
        log::info(&format!("{} bytes from {url}", text.len()));
        let excerpt: String = text.chars().take(1500).collect();
        llm::ask_with("Summarize this page in one sentence.", &excerpt, 64)
            .map_err(|e| e.to_string())
    }
}

agent!(ToolUser);
