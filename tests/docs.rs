//! What the docs hand users to copy still reads: every YAML block of
//! docs/pull-requests.md parses, the request file shown is a request
//! credsync accepts, and each CI workflow has its triggers and steps.

mod support;

use credsync::snapshot::request::RollbackRequest;

/// The ```yaml blocks of a markdown file, in order.
fn yaml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```yaml") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn the_pull_request_docs_show_yaml_that_works() {
    let path = support::project_dir().join("docs/pull-requests.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let blocks = yaml_blocks(&text);
    assert_eq!(blocks.len(), 4, "{}", path.display());
    let mut requests = 0;
    let mut workflows = 0;
    for block in &blocks {
        let doc: serde_yaml::Value =
            serde_yaml::from_str(block).unwrap_or_else(|e| panic!("not YAML ({e}):\n{block}"));
        if doc.get("kind").and_then(|k| k.as_str()) == Some("RollbackRequest") {
            let request = RollbackRequest::parse(block)
                .unwrap_or_else(|e| panic!("the documented request is refused: {e}"));
            assert_eq!(request.secrets.len(), 1);
            requests += 1;
        } else if let Some(jobs) = doc.get("jobs").and_then(|j| j.as_mapping()) {
            // GitHub Actions: triggers, and steps that run credsync.
            assert!(doc.get("on").is_some(), "{block}");
            for job in jobs.values() {
                assert!(
                    job.get("steps").and_then(|s| s.as_sequence()).is_some(),
                    "{block}"
                );
            }
            assert!(block.contains("credsync plan"), "{block}");
            workflows += 1;
        } else {
            // GitLab CI: one job with a script.
            let job = doc
                .as_mapping()
                .and_then(|m| m.values().next())
                .unwrap_or_else(|| panic!("{block}"));
            assert!(
                job.get("script").and_then(|s| s.as_sequence()).is_some(),
                "{block}"
            );
            workflows += 1;
        }
    }
    assert_eq!((requests, workflows), (1, 3));
}
