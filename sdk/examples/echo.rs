//! Echo: answers its input, counts its tasks, and keeps the count across checkpoints.
use cairn_agent_sdk::{Agent, Task, agent, kv, log};

#[derive(Default)]
struct Echo {
    tasks: u64,
}

impl Agent for Echo {
    fn run(&mut self, task: Task) -> Result<String, String> {
        self.tasks += 1;
        log::info(&format!("task {} #{}", task.id, self.tasks));
        if let Some(key) = task.input.strip_prefix("kv:") {
            let seen = kv::get(key).map_err(|e| e.to_string())?.is_some();
            kv::set(key, b"1").map_err(|e| e.to_string())?;
            return Ok(format!("{key} seen before: {seen}"));
        }
        Ok(format!("{} (task {})", task.input, self.tasks))
    }

    fn snapshot(&mut self) -> Option<Vec<u8>> {
        Some(self.tasks.to_le_bytes().to_vec())
    }

    fn restore(&mut self, state: Vec<u8>) -> Result<(), String> {
        let bytes: [u8; 8] = state.try_into().map_err(|_| "bad checkpoint".to_string())?;
        self.tasks = u64::from_le_bytes(bytes);
        Ok(())
    }

    fn on_message(&mut self, from: String, body: String) -> Result<Option<String>, String> {
        Ok(Some(format!("{from} said {body}")))
    }
}

agent!(Echo);
