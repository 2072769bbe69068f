//! The Cairn agent SDK: implement [`Agent`] on a `Default` type, call [`agent!`], build for
//! `wasm32-wasip2`, sign with `cairn agent sign`. Host calls are plain functions in the modules
//! below; each fails with [`Error::Capability`] unless the agent's manifest grants it.
//!
//! ```ignore
//! use cairn_agent_sdk::{Agent, Task, llm};
//! #[derive(Default)]
//! struct Greeter;
//! impl Agent for Greeter {
//!     fn run(&mut self, task: Task) -> Result<String, String> {
//!         llm::ask(&format!("Greet {}", task.input)).map_err(|e| e.to_string())
//!     }
//! }
//! cairn_agent_sdk::agent!(Greeter);
//! ```

/// The generated bindings of the `cairn:agent` world (used by [`agent!`]).
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../agents/wit",
        world: "agent",
        pub_export_macro: true,
        default_bindings_module: "cairn_agent_sdk::bindings",
        generate_all,
    });
}

use bindings::cairn::agent as host;
pub use host::types::{ChatReply, Message, Task};

/// A host call's failure.
pub type Error = host::types::Error;

/// An agent. One value lives for as long as the agent's instance: fields are its state.
pub trait Agent: Default + 'static {
    /// Does one task.
    fn run(&mut self, task: Task) -> Result<String, String>;
    /// State to keep in a checkpoint; `None` (the default) keeps nothing.
    fn snapshot(&mut self) -> Option<Vec<u8>> {
        None
    }
    /// Restores what [`Agent::snapshot`] returned.
    fn restore(&mut self, _state: Vec<u8>) -> Result<(), String> {
        Err("this agent keeps no checkpoints".into())
    }
    /// Handles a message from another agent; the default ignores it.
    fn on_message(&mut self, _from: String, _body: String) -> Result<Option<String>, String> {
        Ok(None)
    }
}

/// Exports a type implementing [`Agent`] as the component's agent.
#[macro_export]
macro_rules! agent {
    ($ty:ty) => {
        #[doc(hidden)]
        struct __CairnAgentExport;
        thread_local! {
            static __CAIRN_AGENT: ::core::cell::RefCell<Option<$ty>> =
                const { ::core::cell::RefCell::new(None) };
        }
        fn __cairn_with<R>(f: impl FnOnce(&mut $ty) -> R) -> R {
            __CAIRN_AGENT.with(|cell| {
                let mut slot = cell.borrow_mut();
                f(slot.get_or_insert_with(<$ty as ::core::default::Default>::default))
            })
        }
        impl $crate::bindings::Guest for __CairnAgentExport {
            fn run(task: $crate::Task) -> Result<String, String> {
                __cairn_with(|a| $crate::Agent::run(a, task))
            }
            fn snapshot() -> Option<Vec<u8>> {
                __cairn_with(|a| $crate::Agent::snapshot(a))
            }
            fn restore(state: Vec<u8>) -> Result<(), String> {
                __cairn_with(|a| $crate::Agent::restore(a, state))
            }
            fn on_message(from: String, body: String) -> Result<Option<String>, String> {
                __cairn_with(|a| $crate::Agent::on_message(a, from, body))
            }
        }
        $crate::bindings::export!(__CairnAgentExport with_types_in $crate::bindings);
    };
}

/// Language models through the appliance's router.
pub mod llm {
    use super::{ChatReply, Error, Message, host::llm, host::types::ChatRequest};

    /// A chat request with the router's defaults.
    pub fn request(messages: Vec<Message>) -> ChatRequest {
        ChatRequest {
            model: None,
            messages,
            max_tokens: None,
            temperature: None,
            stop: Vec::new(),
            sensitive: false,
        }
    }

    /// A message with a role.
    pub fn message(role: &str, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    /// Chat completion.
    pub fn chat(request: &ChatRequest) -> Result<ChatReply, Error> {
        llm::chat(request)
    }

    /// One user prompt, the reply's text.
    pub fn ask(prompt: &str) -> Result<String, Error> {
        Ok(llm::complete(prompt, None)?.text)
    }

    /// One prompt under a system instruction, the reply's text.
    pub fn ask_with(system: &str, prompt: &str, max_tokens: u32) -> Result<String, Error> {
        let mut r = request(vec![message("system", system), message("user", prompt)]);
        r.max_tokens = Some(max_tokens);
        Ok(llm::chat(&r)?.text)
    }

    /// Streams a reply, calling `on_piece` for each piece; returns the whole text.
    pub fn stream(request: &ChatRequest, mut on_piece: impl FnMut(&str)) -> Result<String, Error> {
        let s = llm::stream_chat(request)?;
        let mut all = String::new();
        while let Some(piece) = s.next()? {
            on_piece(&piece);
            all.push_str(&piece);
        }
        Ok(all)
    }

    /// Embeddings, one per text.
    pub fn embed(texts: &[String]) -> Result<Vec<Vec<f32>>, Error> {
        llm::embed(texts)
    }
}

/// Agent memory in granted namespaces.
pub mod memory {
    pub use super::host::memory::Hit;
    use super::{Error, host::memory};

    /// Stores a record and returns its id.
    pub fn remember(
        namespace: &str,
        tier: &str,
        text: &str,
        metadata: &serde_json::Value,
    ) -> Result<String, Error> {
        memory::remember(namespace, tier, text, &metadata.to_string())
    }

    /// Recalls at most `k` records for a query.
    pub fn recall(namespace: &str, query: &str, k: u32) -> Result<Vec<Hit>, Error> {
        memory::recall(namespace, query, k)
    }
}

/// Messages and subtasks to other agents.
pub mod agents {
    use super::{Error, host::agents};

    /// Sends a message to a running agent; returns its answer, if any.
    pub fn send(to: &str, body: &str) -> Result<Option<String>, Error> {
        agents::send(to, body)
    }

    /// Runs a subtask on another agent and returns its result.
    pub fn spawn(agent: &str, input: &str) -> Result<String, Error> {
        agents::spawn(agent, input)
    }
}

/// Outbound HTTP to allow-listed hosts.
pub mod http {
    pub use super::host::http::Response;
    use super::{Error, host::http};

    /// `GET url`.
    pub fn get(url: &str) -> Result<Response, Error> {
        http::fetch("GET", url, &[], &[])
    }

    /// Any request.
    pub fn fetch(
        method: &str,
        url: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Response, Error> {
        http::fetch(method, url, headers, body)
    }
}

/// The agent's private key-value store.
pub mod kv {
    use super::{Error, host::kv};

    /// The value under `key`.
    pub fn get(key: &str) -> Result<Option<Vec<u8>>, Error> {
        kv::get(key)
    }
    /// Sets `key`.
    pub fn set(key: &str, value: &[u8]) -> Result<(), Error> {
        kv::set(key, value)
    }
    /// Deletes `key`; true if it existed.
    pub fn delete(key: &str) -> Result<bool, Error> {
        kv::delete(key)
    }
    /// Keys starting with `prefix`.
    pub fn keys(prefix: &str) -> Result<Vec<String>, Error> {
        kv::keys(prefix)
    }
}

/// The run's log.
pub mod log {
    use super::host::log::{Level, log};

    /// Logs at info level.
    pub fn info(message: &str) {
        log(Level::Info, message)
    }
    /// Logs at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message)
    }
    /// Logs at error level.
    pub fn error(message: &str) {
        log(Level::Error, message)
    }
    /// Logs at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message)
    }
}

/// Time.
pub mod clock {
    /// Milliseconds since the Unix epoch.
    pub fn now_ms() -> u64 {
        super::host::clock::now_ms()
    }
    /// Monotonic nanoseconds.
    pub fn monotonic_ns() -> u64 {
        super::host::clock::monotonic_ns()
    }
}

/// Randomness.
pub mod random {
    /// `len` random bytes.
    pub fn bytes(len: u32) -> Vec<u8> {
        super::host::random::fill(len)
    }
    /// A random u64.
    pub fn u64() -> u64 {
        super::host::random::next_u64()
    }
}
