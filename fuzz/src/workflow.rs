//! A workflow definition (TOML, or JSON when it starts with `{`), as `POST /api/v1/workflows`
//! takes it: parse and check it, then walk what the runner reads; never a panic.
use cairn_agents::Workflow;

/// Runs the target on one input; a panic is a finding.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(wf) = Workflow::parse(text) {
        let _ = wf.agents();
        // A checked workflow survives its own JSON form unchanged.
        let json = serde_json::to_string(&wf).expect("a workflow serializes");
        let again = Workflow::from_json(&json).expect("a checked workflow checks again");
        assert_eq!(
            serde_json::to_value(&again).ok(),
            serde_json::to_value(&wf).ok()
        );
    }
}
