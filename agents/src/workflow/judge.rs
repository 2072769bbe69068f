//! The judge pipeline: rule judges (JSON schema subset, regex, length, banned terms) and LLM
//! judges with a rubric, combined by weighted majority; failed outputs are retried,
//! re-routed to an alternate agent, or rejected with the judges' reasons.

use super::Step;
use crate::services::{Caller, Chat, ChatMessage, Services};
use serde::{Deserialize, Serialize};

/// What happens to an output the judges fail.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnFail {
    /// The run ends `rejected` with the reasons.
    #[default]
    Reject,
    /// The whole topology runs again, up to `retries` times; then rejected.
    Retry,
    /// The `alternate` step produces a new output from the input; judged again, then rejected.
    Reroute,
}

/// Judges of a workflow's final output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JudgeSpec {
    /// The judges.
    pub judges: Vec<Judge>,
    /// Judges that must give a verdict (default: all of them).
    #[serde(default)]
    pub min_judges: Option<u32>,
    /// Passing weight must be more than this share of the verdicts' weight (default 0.5).
    #[serde(default = "half")]
    pub majority: f64,
    /// What happens to a failed output.
    #[serde(default)]
    pub on_fail: OnFail,
    /// Reruns for `retry` (default 1).
    #[serde(default = "one")]
    pub retries: u32,
    /// The agent re-routed to (`reroute`); its template sees `{input}`, `{output}`, `{reasons}`.
    #[serde(default)]
    pub alternate: Option<Step>,
}

fn half() -> f64 {
    0.5
}
fn one() -> u32 {
    1
}
fn weight1() -> f64 {
    1.0
}
fn seven() -> f64 {
    7.0
}
fn ten() -> f64 {
    10.0
}

/// One judge; every kind has an optional `name` and a `weight` (default 1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Judge {
    /// The output is JSON matching a schema subset: `type`, `required`, `properties`, `items`.
    JsonSchema {
        /// Name in verdicts.
        #[serde(default)]
        name: Option<String>,
        /// Weight in the majority.
        #[serde(default = "weight1")]
        weight: f64,
        /// The schema.
        schema: serde_json::Value,
    },
    /// The output matches a regular expression.
    Regex {
        /// Name in verdicts.
        #[serde(default)]
        name: Option<String>,
        /// Weight in the majority.
        #[serde(default = "weight1")]
        weight: f64,
        /// The pattern.
        pattern: String,
    },
    /// The output's length in characters is within bounds.
    Length {
        /// Name in verdicts.
        #[serde(default)]
        name: Option<String>,
        /// Weight in the majority.
        #[serde(default = "weight1")]
        weight: f64,
        /// Fewest characters.
        #[serde(default)]
        min: Option<usize>,
        /// Most characters.
        #[serde(default)]
        max: Option<usize>,
    },
    /// The output contains none of the terms (case-insensitive).
    Banned {
        /// Name in verdicts.
        #[serde(default)]
        name: Option<String>,
        /// Weight in the majority.
        #[serde(default = "weight1")]
        weight: f64,
        /// The terms.
        terms: Vec<String>,
    },
    /// A model scores the output against a rubric; the first number in its reply is the score.
    Llm {
        /// Name in verdicts.
        #[serde(default)]
        name: Option<String>,
        /// Weight in the majority.
        #[serde(default = "weight1")]
        weight: f64,
        /// What a good output is.
        rubric: String,
        /// Model (default: the router's policy).
        #[serde(default)]
        model: Option<String>,
        /// Score to pass (default 7).
        #[serde(default = "seven")]
        threshold: f64,
        /// Top of the scale (default 10).
        #[serde(default = "ten")]
        scale: f64,
    },
}

/// One judge's verdict.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    /// Judge name (its `name`, else `KIND#INDEX`).
    pub judge: String,
    /// Judge kind.
    pub kind: String,
    /// Weight.
    pub weight: f64,
    /// Pass or fail; none when the judge could not decide (its weight does not count).
    pub passed: Option<bool>,
    /// Score from 0 to 1 (rule judges: 1 or 0).
    pub score: Option<f64>,
    /// Model that judged (LLM judges).
    pub model: Option<String>,
    /// Why.
    pub reason: String,
}

/// The judges' verdicts on one output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Judgement {
    /// Which output: `pass N` or `reroute`.
    pub target: String,
    /// The verdicts, in declaration order.
    pub verdicts: Vec<Verdict>,
    /// Whether the output passed.
    pub passed: bool,
    /// Weighted mean score of the verdicts (0 to 1).
    pub score: Option<f64>,
    /// Why it failed, one reason per failing judge (or the missing quorum).
    pub reasons: Vec<String>,
}

impl Judge {
    fn kind(&self) -> &'static str {
        match self {
            Judge::JsonSchema { .. } => "json-schema",
            Judge::Regex { .. } => "regex",
            Judge::Length { .. } => "length",
            Judge::Banned { .. } => "banned",
            Judge::Llm { .. } => "llm",
        }
    }

    fn name_weight(&self) -> (Option<&String>, f64) {
        match self {
            Judge::JsonSchema { name, weight, .. }
            | Judge::Regex { name, weight, .. }
            | Judge::Length { name, weight, .. }
            | Judge::Banned { name, weight, .. }
            | Judge::Llm { name, weight, .. } => (name.as_ref(), *weight),
        }
    }
}

impl JudgeSpec {
    /// Checks the judges; the error names the bad field.
    pub fn validate(&self) -> Result<(), String> {
        if self.judges.is_empty() {
            return Err("judges must not be empty".into());
        }
        if let Some(m) = self.min_judges
            && (m == 0 || m as usize > self.judges.len())
        {
            return Err(format!(
                "min_judges must be 1..={}, not {m}",
                self.judges.len()
            ));
        }
        if !(0.0..1.0).contains(&self.majority) {
            return Err(format!(
                "majority must be at least 0 and below 1, not {}",
                self.majority
            ));
        }
        if self.retries > 10 {
            return Err("retries must be 0..=10".into());
        }
        match (self.on_fail, &self.alternate) {
            (OnFail::Reroute, None) => {
                return Err("on_fail = \"reroute\" needs an `alternate` step".into());
            }
            (OnFail::Retry, _) if self.retries == 0 => {
                return Err("on_fail = \"retry\" needs retries of at least 1".into());
            }
            _ => {}
        }
        if let Some(a) = &self.alternate
            && !crate::manifest::valid_name(&a.agent)
        {
            return Err(format!(
                "alternate.agent {:?} is not an agent name",
                a.agent
            ));
        }
        for (i, j) in self.judges.iter().enumerate() {
            let at = format!("judges[{i}]");
            let (_, w) = j.name_weight();
            if !(w > 0.0 && w.is_finite()) {
                return Err(format!("{at}.weight must be above 0"));
            }
            match j {
                Judge::JsonSchema { schema, .. } => {
                    if !schema.is_object() {
                        return Err(format!("{at}.schema must be an object"));
                    }
                }
                Judge::Regex { pattern, .. } => {
                    regex::Regex::new(pattern)
                        .map_err(|e| format!("{at}.pattern: bad regex: {e}"))?;
                }
                Judge::Length { min, max, .. } => match (min, max) {
                    (None, None) => return Err(format!("{at}: give min, max or both")),
                    (Some(a), Some(b)) if a > b => {
                        return Err(format!("{at}: min {a} is above max {b}"));
                    }
                    _ => {}
                },
                Judge::Banned { terms, .. } => {
                    if terms.is_empty() || terms.iter().any(|t| t.is_empty()) {
                        return Err(format!("{at}.terms must be non-empty strings"));
                    }
                }
                Judge::Llm {
                    rubric,
                    threshold,
                    scale,
                    ..
                } => {
                    if rubric.trim().is_empty() {
                        return Err(format!("{at}.rubric must not be empty"));
                    }
                    if !(*scale > 0.0 && scale.is_finite()) {
                        return Err(format!("{at}.scale must be above 0"));
                    }
                    if !(0.0..=*scale).contains(threshold) {
                        return Err(format!("{at}.threshold must be within 0..={scale}"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Judges one output.
    pub async fn judge(
        &self,
        services: &dyn Services,
        run_id: &str,
        target: String,
        input: &str,
        output: &str,
    ) -> Judgement {
        let mut verdicts = Vec::new();
        for (i, j) in self.judges.iter().enumerate() {
            let (name, weight) = j.name_weight();
            let mut v = Verdict {
                judge: name.cloned().unwrap_or_else(|| format!("{}#{i}", j.kind())),
                kind: j.kind().into(),
                weight,
                passed: None,
                score: None,
                model: None,
                reason: String::new(),
            };
            let rule = |v: &mut Verdict, r: Result<(), String>| {
                v.passed = Some(r.is_ok());
                v.score = Some(if r.is_ok() { 1.0 } else { 0.0 });
                v.reason = r.err().unwrap_or_else(|| "ok".into());
            };
            match j {
                Judge::JsonSchema { schema, .. } => {
                    let r = serde_json::from_str::<serde_json::Value>(output)
                        .map_err(|e| format!("output is not JSON: {e}"))
                        .and_then(|doc| check_schema(schema, &doc, "$"));
                    rule(&mut v, r);
                }
                Judge::Regex { pattern, .. } => {
                    let ok = regex::Regex::new(pattern).is_ok_and(|r| r.is_match(output));
                    rule(
                        &mut v,
                        if ok {
                            Ok(())
                        } else {
                            Err(format!("output does not match /{pattern}/"))
                        },
                    );
                }
                Judge::Length { min, max, .. } => {
                    let n = output.chars().count();
                    let r = match (min, max) {
                        (Some(a), _) if n < *a => {
                            Err(format!("output has {n} characters, fewer than {a}"))
                        }
                        (_, Some(b)) if n > *b => {
                            Err(format!("output has {n} characters, more than {b}"))
                        }
                        _ => Ok(()),
                    };
                    rule(&mut v, r);
                }
                Judge::Banned { terms, .. } => {
                    let low = output.to_lowercase();
                    let found: Vec<&String> = terms
                        .iter()
                        .filter(|t| low.contains(&t.to_lowercase()))
                        .collect();
                    let r = if found.is_empty() {
                        Ok(())
                    } else {
                        Err(format!("output contains banned terms {found:?}"))
                    };
                    rule(&mut v, r);
                }
                Judge::Llm {
                    rubric,
                    model,
                    threshold,
                    scale,
                    ..
                } => {
                    let caller = Caller {
                        agent: "judge".into(),
                        run: run_id.into(),
                    };
                    let chat = Chat {
                        model: model.clone(),
                        messages: vec![
                            ChatMessage {
                                role: "system".into(),
                                content: format!(
                                    "You judge an output against this rubric:\n{rubric}\n\
                                     Reply with a score from 0 to {scale} first, then one sentence of reasons."
                                ),
                            },
                            ChatMessage {
                                role: "user".into(),
                                content: format!("Task:\n{input}\n\nOutput:\n{output}"),
                            },
                        ],
                        max_tokens: Some(128),
                        temperature: Some(0.0),
                        stop: Vec::new(),
                        sensitive: false,
                    };
                    match services.chat(&caller, chat).await {
                        Ok(a) => {
                            v.model = Some(a.model.clone());
                            match first_number(&a.text) {
                                Some(s) => {
                                    let s = s.clamp(0.0, *scale);
                                    v.score = Some(s / scale);
                                    v.passed = Some(s >= *threshold);
                                    v.reason = if s >= *threshold {
                                        format!("scored {s} of {scale}")
                                    } else {
                                        format!("scored {s} of {scale}, below {threshold}")
                                    };
                                }
                                None => {
                                    v.reason = format!(
                                        "no score in the reply: {}",
                                        a.text.chars().take(120).collect::<String>()
                                    )
                                }
                            }
                        }
                        Err(e) => v.reason = format!("the model failed: {e}"),
                    }
                }
            }
            verdicts.push(v);
        }
        self.decide(target, verdicts)
    }

    fn decide(&self, target: String, verdicts: Vec<Verdict>) -> Judgement {
        let given: Vec<&Verdict> = verdicts.iter().filter(|v| v.passed.is_some()).collect();
        let need = self.min_judges.unwrap_or(self.judges.len() as u32) as usize;
        let total: f64 = given.iter().map(|v| v.weight).sum();
        let pass: f64 = given
            .iter()
            .filter(|v| v.passed == Some(true))
            .map(|v| v.weight)
            .sum();
        let score = (total > 0.0).then(|| {
            given
                .iter()
                .map(|v| v.weight * v.score.unwrap_or(0.0))
                .sum::<f64>()
                / total
        });
        let mut reasons: Vec<String> = verdicts
            .iter()
            .filter(|v| v.passed != Some(true))
            .map(|v| format!("{}: {}", v.judge, v.reason))
            .collect();
        let quorum = given.len() >= need;
        if !quorum {
            reasons.insert(
                0,
                format!(
                    "only {} of {need} required judges gave a verdict",
                    given.len()
                ),
            );
        }
        let passed = quorum && total > 0.0 && pass > self.majority * total;
        if passed {
            reasons.clear();
        }
        Judgement {
            target,
            verdicts,
            passed,
            score,
            reasons,
        }
    }
}

fn first_number(text: &str) -> Option<f64> {
    let re = regex::Regex::new(r"-?\d+(?:\.\d+)?").expect("static regex");
    re.find(text).and_then(|m| m.as_str().parse().ok())
}

/// Checks `doc` against the schema subset: `type`, `required`, `properties`, `items`, `enum`.
fn check_schema(
    schema: &serde_json::Value,
    doc: &serde_json::Value,
    at: &str,
) -> Result<(), String> {
    use serde_json::Value;
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let ok = types.iter().any(|t| match *t {
            "object" => doc.is_object(),
            "array" => doc.is_array(),
            "string" => doc.is_string(),
            "number" => doc.is_number(),
            "integer" => doc.is_i64() || doc.is_u64(),
            "boolean" => doc.is_boolean(),
            "null" => doc.is_null(),
            _ => false,
        });
        if !ok {
            return Err(format!("{at} is not of type {}", types.join(" or ")));
        }
    }
    if let Some(Value::Array(options)) = schema.get("enum")
        && !options.contains(doc)
    {
        return Err(format!("{at} is not one of the allowed values"));
    }
    if let Some(obj) = doc.as_object() {
        if let Some(Value::Array(req)) = schema.get("required") {
            for r in req.iter().filter_map(Value::as_str) {
                if !obj.contains_key(r) {
                    return Err(format!("{at} lacks the required property {r:?}"));
                }
            }
        }
        if let Some(Value::Object(props)) = schema.get("properties") {
            for (k, sub) in props {
                if let Some(v) = obj.get(k) {
                    check_schema(sub, v, &format!("{at}.{k}"))?;
                }
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), doc.as_array()) {
        for (i, v) in arr.iter().enumerate() {
            check_schema(items, v, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_subset() {
        let schema = serde_json::json!({
            "type": "object",
            "required": ["score"],
            "properties": {"score": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}}
        });
        let ok = serde_json::json!({"score": 3, "tags": ["a"]});
        assert!(check_schema(&schema, &ok, "$").is_ok());
        let missing = serde_json::json!({"tags": []});
        assert!(
            check_schema(&schema, &missing, "$")
                .unwrap_err()
                .contains("score")
        );
        let wrong = serde_json::json!({"score": 3, "tags": [1]});
        assert!(
            check_schema(&schema, &wrong, "$")
                .unwrap_err()
                .contains("$.tags[0]")
        );
    }

    #[test]
    fn numbers_in_replies() {
        assert_eq!(first_number("Score 8. Reply to: x"), Some(8.0));
        assert_eq!(first_number("7.5/10"), Some(7.5));
        assert_eq!(first_number("none"), None);
    }
}
