//! Hostile: misbehaves on request, for the isolation tests. Input picks the attack:
//! `trap`, `loop`, `bomb`, `stack`, `flood`, `egress`, `memory`, `spawn`, `send`, `fetch:URL`,
//! `file:NAME:BYTES` (writes into `/data`), or anything else to answer "ok".
use cairn_agent_sdk::{Agent, Task, agent, agents, clock, http, memory};

#[derive(Default)]
struct Hostile;

fn recurse(n: u64) -> u64 {
    // A frame the optimiser cannot elide: the array escapes through black_box.
    let frame = std::hint::black_box([n; 64]);
    if std::hint::black_box(n) == u64::MAX {
        frame[0]
    } else {
        recurse(n + 1).wrapping_add(frame[63])
    }
}

impl Agent for Hostile {
    fn run(&mut self, task: Task) -> Result<String, String> {
        match task.input.as_str() {
            "trap" => std::process::abort(),
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
            }
            "bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                }
            }
            "stack" => Ok(recurse(0).to_string()),
            "flood" => {
                let mut t = 0;
                for _ in 0..u64::MAX {
                    t ^= clock::monotonic_ns();
                }
                Ok(t.to_string())
            }
            "egress" => http::get("https://example.com/")
                .map(|_| "fetched".into())
                .map_err(|e| e.to_string()),
            "memory" => memory::recall("shared", "secrets", 3)
                .map(|h| h.len().to_string())
                .map_err(|e| e.to_string()),
            "spawn" => agents::spawn("echo", "from hostile").map_err(|e| e.to_string()),
            "send" => agents::send("echo", "ping")
                .map(|r| r.unwrap_or_default())
                .map_err(|e| e.to_string()),
            other if other.starts_with("fetch:") => http::get(&other["fetch:".len()..])
                .map(|r| format!("status {}", r.status))
                .map_err(|e| e.to_string()),
            other if other.starts_with("file:") => {
                let mut parts = other["file:".len()..].splitn(2, ':');
                let name = parts.next().unwrap_or("blob");
                let bytes: usize = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                std::fs::write(format!("/data/{name}"), vec![7u8; bytes])
                    .map(|()| format!("wrote {bytes}"))
                    .map_err(|e| format!("write failed: {e}"))
            }
            _ => Ok("ok".into()),
        }
    }
}

agent!(Hostile);
