//! Parrot: answers its input verbatim (no counter, so concurrent calls agree), for composing
//! workflows. An input `flaky:TEXT` fails the instance's odd-numbered tasks and answers TEXT on
//! the even ones, for retry tests.
use cairn_agent_sdk::{Agent, Task, agent};

#[derive(Default)]
struct Parrot {
    tasks: u64,
}

impl Agent for Parrot {
    fn run(&mut self, task: Task) -> Result<String, String> {
        self.tasks += 1;
        match task.input.strip_prefix("flaky:") {
            Some(_) if self.tasks % 2 == 1 => Err(format!("flaky: task {} fails", self.tasks)),
            Some(text) => Ok(text.to_string()),
            None => Ok(task.input),
        }
    }
}

agent!(Parrot);
