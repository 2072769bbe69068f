//! Chat prompts: the model's own Jinja template (`tokenizer.chat_template`) rendered with
//! minijinja, or a per-family fallback when the file has none.

use minijinja::{Environment, ErrorKind, context};
use serde::{Deserialize, Serialize};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant` (or `tool`).
    pub role: String,
    /// Text.
    pub content: String,
}

impl Message {
    /// A message.
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Why a prompt could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The template does not compile or raised an exception.
    #[error("chat template: {0}")]
    Template(String),
    /// The conversation itself is unusable.
    #[error("{0}")]
    BadConversation(String),
}

/// Built-in templates for models whose GGUF carries none.
pub mod fallback {
    /// ChatML (SmolLM2, Qwen2, many fine-tunes).
    pub const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    /// Llama 2 / Mistral instruct.
    pub const LLAMA2: &str = "{% for m in messages %}{% if m.role == 'system' %}<<SYS>>\n{{ m.content }}\n<</SYS>>\n\n{% elif m.role == 'user' %}{{ bos_token }}[INST] {{ m.content }} [/INST]{% else %} {{ m.content }}{{ eos_token }}{% endif %}{% endfor %}";
    /// Llama 3.
    pub const LLAMA3: &str = "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}";
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

/// Work one rendering may do, in minijinja fuel units (instructions).
const TEMPLATE_FUEL: u64 = 5_000_000;

impl ChatTemplate {
    /// Compiles a template; `bos`/`eos` are the token strings templates refer to.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<ChatTemplate, ChatError> {
        let mut env = Environment::new();
        // A template comes from the model file, which may be hostile: bound the work one
        // rendering may do (a real chat template uses a few thousand units per turn) and the
        // nesting depth.
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_recursion_limit(64);
        // Hugging Face templates call Python string methods (.strip(), .startswith(), ...).
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", |fmt: String| -> String {
            // Templates use it for "today's date"; a fixed, valid rendering keeps prompts
            // deterministic (the appliance has no trustworthy time zone anyway).
            fmt.replace("%d", "01")
                .replace("%B", "January")
                .replace("%b", "Jan")
                .replace("%Y", "2026")
                .replace("%m", "01")
        });
        env.add_template_owned("chat".to_string(), source.to_string())
            .map_err(|e| ChatError::Template(e.to_string()))?;
        Ok(ChatTemplate {
            env,
            bos: bos.into(),
            eos: eos.into(),
        })
    }

    /// The template for a model: its own, else the family's fallback.
    pub fn for_model(
        own: Option<&str>,
        architecture: &str,
        pre: Option<&str>,
        bos: &str,
        eos: &str,
    ) -> Result<ChatTemplate, ChatError> {
        let source = match own {
            Some(t) if !t.trim().is_empty() => t,
            _ => match (architecture, pre) {
                (_, Some("llama3" | "llama-bpe")) => fallback::LLAMA3,
                ("qwen2" | "qwen3", _) | (_, Some("smollm" | "qwen2")) => fallback::CHATML,
                ("llama", _) => fallback::LLAMA2,
                _ => fallback::CHATML,
            },
        };
        ChatTemplate::new(source, bos, eos)
    }

    /// Renders a conversation, ending with the assistant's turn opened when asked.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        if messages.is_empty() {
            return Err(ChatError::BadConversation(
                "messages must not be empty".into(),
            ));
        }
        if let Some(m) = messages
            .iter()
            .find(|m| !matches!(m.role.as_str(), "system" | "user" | "assistant" | "tool"))
        {
            return Err(ChatError::BadConversation(format!(
                "unknown role {:?} (system, user, assistant or tool)",
                m.role
            )));
        }
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| ChatError::Template(e.to_string()))?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos,
            eos_token => self.eos,
        })
        .map_err(|e| ChatError::Template(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M-Instruct's own template (from its GGUF).
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_the_models_own_template() {
        let t = ChatTemplate::new(SMOLLM2, "<|im_start|>", "<|im_end|>").unwrap();
        let p = t.render(&[Message::new("user", "Hi")], true).unwrap();
        assert_eq!(
            p,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn a_hostile_template_runs_out_of_fuel_instead_of_hanging() {
        let t = ChatTemplate::new(
            "{% for a in range(10000) %}{% for b in range(10000) %}{{ a }}{% endfor %}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        let e = t.render(&[Message::new("user", "Hi")], true).unwrap_err();
        assert!(e.to_string().contains("fuel"), "{e}");
    }

    #[test]
    fn python_methods_and_exceptions_work() {
        let t = ChatTemplate::new(
            "{% if messages[0].role == 'tool' %}{{ raise_exception('no tools here') }}{% endif %}{{ messages[0].content.strip().upper() }}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(
            t.render(&[Message::new("user", "  hi ")], false).unwrap(),
            "HI"
        );
        let e = t
            .render(&[Message::new("tool", "x")], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no tools here"), "{e}");
    }

    #[test]
    fn fallbacks_by_family() {
        let t = ChatTemplate::for_model(None, "qwen2", None, "", "").unwrap();
        assert!(
            t.render(&[Message::new("user", "x")], true)
                .unwrap()
                .ends_with("<|im_start|>assistant\n")
        );
        let t = ChatTemplate::for_model(
            Some(" "),
            "llama",
            Some("llama-bpe"),
            "<|begin_of_text|>",
            "",
        )
        .unwrap();
        assert!(
            t.render(&[Message::new("user", "x")], true)
                .unwrap()
                .starts_with("<|begin_of_text|><|start_header_id|>user")
        );
        let t = ChatTemplate::for_model(None, "llama", None, "<s>", "</s>").unwrap();
        assert_eq!(
            t.render(&[Message::new("user", "x")], true).unwrap(),
            "<s>[INST] x [/INST]"
        );
    }

    #[test]
    fn bad_input_is_an_error() {
        let t = ChatTemplate::new(fallback::CHATML, "", "").unwrap();
        assert!(t.render(&[], true).is_err());
        assert!(
            t.render(&[Message::new("wizard", "x")], true)
                .unwrap_err()
                .to_string()
                .contains("wizard")
        );
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }
}
