//! The reference files in the repository's `snapshots/` directory: one
//! encrypted by the real sops 3.11, one written by credsync, each beside its
//! plaintext twin, all for the test age key in `fixtures/age-test.key`.
//! They show what the snapshot format looks like; these tests keep them true.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sops_age::{Identities, Recipients, open, outline, seal};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn identity() -> Identities {
    Identities::from_file(&root().join("fixtures/age-test.key")).expect("the test age key")
}

/// `data` (base64 decoded) and `stringData` of a plaintext manifest.
fn plain_values(path: &str) -> BTreeMap<String, Vec<u8>> {
    let doc: serde_yaml::Value = serde_yaml::from_str(&read(path)).unwrap();
    let mut out = BTreeMap::new();
    if let Some(data) = doc["data"].as_mapping() {
        for (k, v) in data {
            let bytes = STANDARD.decode(v.as_str().unwrap()).unwrap();
            out.insert(k.as_str().unwrap().to_owned(), bytes);
        }
    }
    if let Some(data) = doc["stringData"].as_mapping() {
        for (k, v) in data {
            out.insert(
                k.as_str().unwrap().to_owned(),
                v.as_str().unwrap().as_bytes().to_vec(),
            );
        }
    }
    out
}

fn opened_values(path: &str) -> BTreeMap<String, Vec<u8>> {
    let doc = open(&read(path), &identity()).unwrap_or_else(|e| panic!("{path}: {e}"));
    doc.data
        .into_iter()
        .map(|(k, v)| (k, v.expose().to_vec()))
        .collect()
}

#[test]
fn credsync_opens_the_file_the_real_sops_encrypted() {
    let values = opened_values("snapshots/from-sops/team-a/api.yaml");
    assert_eq!(
        values,
        plain_values("snapshots/from-sops/team-a/api.plain.yaml")
    );
    assert_eq!(
        values["REGION"], b"eu-west-1",
        "stringData merged into data"
    );
    let meta = outline(&read("snapshots/from-sops/team-a/api.yaml")).unwrap();
    assert_eq!(
        (meta.namespace.as_str(), meta.name.as_str()),
        ("team-a", "api")
    );
}

#[test]
fn the_real_sops_decrypts_the_file_credsync_wrote_to_its_twin() {
    let sops = root().join(".venv/bin/sops");
    assert!(sops.exists(), "the real sops is missing: run `just setup`");
    let out = Command::new(&sops)
        .args(["-d", "snapshots/demo/team-a/db.yaml"])
        .current_dir(root())
        .env("SOPS_AGE_KEY_FILE", root().join("fixtures/age-test.key"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        read("snapshots/demo/team-a/db.plain.yaml")
    );
    assert_eq!(
        opened_values("snapshots/demo/team-a/db.yaml"),
        plain_values("snapshots/demo/team-a/db.plain.yaml")
    );
}

#[test]
fn credsync_still_writes_the_reference_file_byte_for_byte() {
    // Sealing the same document again over the previous file keeps its data
    // key, ciphertexts, lastmodified and MAC: any change of the format shows.
    let text = read("snapshots/demo/team-a/db.yaml");
    let ids = identity();
    let doc = open(&text, &ids).unwrap();
    let recipients = Recipients::parse(&outline(&text).unwrap().recipients).unwrap();
    let again = seal(&doc, &recipients, Some((&text, &ids)), chrono::Utc::now()).unwrap();
    assert_eq!(again, text);
}
