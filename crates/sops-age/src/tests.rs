//! Unit tests across the modules: round trips, the layout sops writes,
//! tampering, keys, and no value in any error.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use serde_yaml::Value;

use crate::cipher::parse_enc;
use crate::decrypt::decrypt_file;
use crate::document::manifest_tree;
use crate::emit::yaml_scalar;
use crate::encrypt::seal_tree;
use crate::go::{go_float, go_rfc3339};
use crate::metadata::Rule;
use crate::tree::{Node, str_node};
use crate::*;
use age::secrecy::ExposeSecret;

const SECRET: &str = "hunter2-very-secret";

fn identity() -> (age::x25519::Identity, String) {
    let id = age::x25519::Identity::generate();
    let recipient = id.to_public().to_string();
    (id, recipient)
}

fn ids(id: &age::x25519::Identity) -> Identities {
    Identities::from_text(id.to_string().expose_secret(), "test").expect("identity")
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

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

/// Line numbers where two texts of equal length differ.
fn changed_lines<'a>(a: &'a str, b: &'a str) -> Vec<&'a str> {
    let (a, b) = (lines(a), lines(b));
    assert_eq!(a.len(), b.len(), "line count changed");
    a.iter()
        .zip(&b)
        .filter(|(x, y)| x != y)
        .map(|(_, y)| y.split(':').next().unwrap_or_default().trim())
        .collect()
}

fn secret_free(text: &str) {
    let b64 = STANDARD.encode(SECRET);
    assert!(!text.contains(SECRET), "value leaked: {text}");
    assert!(!text.contains(&b64), "base64 value leaked: {text}");
    let key_leaked = text
        .match_indices("AGE-SECRET-KEY-1")
        .any(|(at, m)| text[at + m.len()..].starts_with(|c: char| c.is_ascii_alphanumeric()));
    assert!(!key_leaked, "key leaked: {text}");
}

#[test]
fn round_trip() {
    let (id, r) = identity();
    let sealed = seal(&doc(), &recipients(&[&r]), None, at(0)).expect("seal");
    secret_free(&sealed);
    assert_eq!(open(&sealed, &ids(&id)).expect("open"), doc());
}

#[test]
fn layout_is_what_sops_writes() {
    let (_, r) = identity();
    let sealed = seal(&doc(), &recipients(&[&r]), None, at(0)).expect("seal");
    let l = lines(&sealed);
    assert_eq!(
        &l[..13],
        &[
            "apiVersion: v1",
            "kind: Secret",
            "metadata:",
            "    name: db",
            "    namespace: prod",
            "    labels:",
            "        app: web",
            "        tier: \"true\"",
            "    annotations:",
            "        credsync.io/sources: \"{\\\"password\\\":\\\"credential-store@0000000000000000003\\\"}\"",
            "type: Opaque",
            "data:",
            "    binary: ENC[AES256_GCM,data:",
        ][..12]
            .iter()
            .copied()
            .chain([l[12]])
            .collect::<Vec<_>>()[..]
    );
    let keys: Vec<&str> = l[12..17]
        .iter()
        .map(|s| s.trim().split(':').next().unwrap_or_default())
        .collect();
    assert_eq!(keys, ["binary", "empty", "\"n\"", "password", "user"]);
    assert_eq!(l[13], "    empty: \"\"");
    assert!(l[14].starts_with("    \"n\": ENC[AES256_GCM,data:"));
    assert!(l[15].ends_with(",type:str]"));
    let tail: Vec<&str> = l[17..]
        .iter()
        .filter(|s| !s.starts_with("            "))
        .map(|s| s.split(':').next().unwrap_or_default())
        .collect();
    assert_eq!(
        tail,
        [
            "sops",
            "    age",
            "        - recipient",
            "          enc",
            "    lastmodified",
            "    mac",
            "    encrypted_regex",
            "    version"
        ]
    );
    assert!(sealed.contains(&format!("        - recipient: {r}\n")));
    assert!(sealed.contains("\n            -----BEGIN AGE ENCRYPTED FILE-----\n"));
    assert!(sealed.contains("    lastmodified: \"2026-11-18T11:06:40Z\"\n"));
    assert!(sealed.ends_with("    encrypted_regex: ^(data|stringData)$\n    version: 3.11.0\n"));
    // The IV is 32 bytes, as sops writes it.
    let enc = l[15].split_once(": ").expect("value").1;
    let parts = parse_enc(enc).expect("ENC");
    assert_eq!(
        (parts.iv.len(), parts.tag.len(), parts.kind.as_str()),
        (32, 16, "str")
    );
}

#[test]
fn mac_mismatch_on_edited_readable_value() {
    let (id, r) = identity();
    let sealed = seal(&doc(), &recipients(&[&r]), None, at(0)).expect("seal");
    let edited = sealed.replace("app: web", "app: evil");
    assert!(matches!(
        open(&edited, &ids(&id)),
        Err(SopsError::MacMismatch)
    ));
}

#[test]
fn mac_mismatch_on_swapped_encrypted_value() {
    // Two files under one data key: an old value spliced into the new
    // file decrypts fine, and only the MAC catches it.
    let (id, r) = identity();
    let rs = recipients(&[&r]);
    let old = seal(&doc(), &rs, None, at(0)).expect("seal");
    let mut changed = doc();
    changed.data.insert("password".into(), value(b"rotated"));
    let new = seal(&changed, &rs, Some((&old, &ids(&id))), at(60)).expect("seal");
    let old_line = lines(&old)
        .into_iter()
        .find(|l| l.starts_with("    password:"))
        .expect("line");
    let new_line = lines(&new)
        .into_iter()
        .find(|l| l.starts_with("    password:"))
        .expect("line");
    assert_ne!(old_line, new_line);
    let spliced = new.replace(new_line, old_line);
    assert!(matches!(
        open(&spliced, &ids(&id)),
        Err(SopsError::MacMismatch)
    ));
}

#[test]
fn mac_mismatch_on_edited_mac_and_bad_ciphertext() {
    let (id, r) = identity();
    let sealed = seal(&doc(), &recipients(&[&r]), None, at(0)).expect("seal");
    let mac_line = lines(&sealed)
        .into_iter()
        .find(|l| l.starts_with("    mac: "))
        .expect("mac");
    let flipped = flip_data(mac_line);
    let edited = sealed.replace(mac_line, &flipped);
    assert!(matches!(
        open(&edited, &ids(&id)),
        Err(SopsError::MacMismatch)
    ));
    let no_mac = sealed.replace(mac_line, "    mac: \"\"");
    assert!(matches!(
        open(&no_mac, &ids(&id)),
        Err(SopsError::MacMismatch)
    ));

    let user_line = lines(&sealed)
        .into_iter()
        .find(|l| l.starts_with("    user: "))
        .expect("user");
    let edited = sealed.replace(user_line, &flip_data(user_line));
    match open(&edited, &ids(&id)) {
        Err(SopsError::BadCiphertext { path }) => assert_eq!(path, "data:user:"),
        other => panic!("expected BadCiphertext, got {other:?}"),
    }
}

/// Changes the first character of the `data:` part of an ENC line.
fn flip_data(line: &str) -> String {
    let at = line.find("data:").expect("data") + 5;
    let mut out = line.to_owned();
    let c = out.as_bytes()[at];
    let replacement = if c == b'A' { "B" } else { "A" };
    out.replace_range(at..at + 1, replacement);
    out
}

#[test]
fn wrong_identity_lists_recipients() {
    let (_, r1) = identity();
    let (_, r2) = identity();
    let (stranger, _) = identity();
    let sealed = seal(&doc(), &recipients(&[&r1, &r2]), None, at(0)).expect("seal");
    let err = open(&sealed, &ids(&stranger)).expect_err("must fail");
    match &err {
        SopsError::NoMatchingIdentity { recipients } => {
            assert_eq!(recipients, &vec![r1.clone(), r2.clone()])
        }
        other => panic!("unexpected {other:?}"),
    }
    let shown = err.to_string();
    assert!(shown.contains(&r1) && shown.contains(&r2), "{shown}");
}

#[test]
fn bad_recipients_are_named_but_private_keys_are_not() {
    let (id, r) = identity();
    for bad in [
        "age1qqqq",
        "",
        "bob@example.com",
        "ssh-ed25519 AAAAnotakey",
        "age1yubikey1qwerty",
    ] {
        match Recipients::parse(&[r.clone(), bad.to_owned()]) {
            Err(SopsError::BadRecipient(named)) => assert_eq!(named, bad),
            other => panic!("{bad}: unexpected {other:?}"),
        }
    }
    let secret = id.to_string().expose_secret().to_owned();
    let err = Recipients::parse(std::slice::from_ref(&secret)).expect_err("must fail");
    assert!(!err.to_string().contains(&secret[15..]), "{err}");
    assert!(!format!("{err:?}").contains(&secret[15..]), "{err:?}");
    assert!(matches!(
        Recipients::parse(&[]),
        Err(SopsError::NoRecipients)
    ));
    // Whitespace and duplicates are normalized away, order kept.
    let (_, r2) = identity();
    let parsed = Recipients::parse(&[format!(" {r2} "), r.clone(), r2.clone()]).expect("ok");
    assert_eq!(parsed.as_strings(), &[r2, r]);
}

#[test]
fn reuses_data_key_and_unchanged_ciphertext() {
    let (id, r) = identity();
    let rs = recipients(&[&r]);
    let first = seal(&doc(), &rs, None, at(0)).expect("seal");
    let mut changed = doc();
    changed.data.insert("user".into(), value(b"root"));
    let second = seal(&changed, &rs, Some((&first, &ids(&id))), at(60)).expect("seal");
    assert_eq!(
        changed_lines(&first, &second),
        ["user", "lastmodified", "mac"]
    );
    assert_eq!(open(&second, &ids(&id)).expect("open"), changed);
    let key = |text: &str| decrypt_file(text, &ids(&id)).expect("open").data_key;
    assert_eq!(*key(&first), *key(&second));

    // A new key adds one line; a removed key removes one.
    let mut added = changed.clone();
    added.data.insert("zz".into(), value(b"new"));
    let third = seal(&added, &rs, Some((&second, &ids(&id))), at(120)).expect("seal");
    let (a, b) = (lines(&second), lines(&third));
    assert_eq!(b.len(), a.len() + 1);
    let common: Vec<_> = b.iter().filter(|l| a.contains(l)).collect();
    assert_eq!(
        common.len(),
        a.len() - 2,
        "all but lastmodified and mac kept"
    );
}

#[test]
fn unchanged_content_gives_identical_bytes() {
    let (id, r) = identity();
    let rs = recipients(&[&r]);
    let first = seal(&doc(), &rs, None, at(0)).expect("seal");
    let again = seal(&doc(), &rs, Some((&first, &ids(&id))), at(3600)).expect("seal");
    assert_eq!(first, again);
    // Without a readable previous file the bytes differ (fresh IVs),
    // but the readable part and the values do not.
    let fresh = seal(&doc(), &rs, None, at(0)).expect("seal");
    assert_ne!(first, fresh);
    assert_eq!(outline(&first).expect("o"), outline(&fresh).expect("o"));
}

#[test]
fn changed_recipients_or_unreadable_previous_get_a_fresh_key() {
    let (id1, r1) = identity();
    let (id2, r2) = identity();
    let first = seal(&doc(), &recipients(&[&r1]), None, at(0)).expect("seal");
    let key = |text: &str, id: &age::x25519::Identity| {
        decrypt_file(text, &ids(id)).expect("open").data_key
    };
    let widened = seal(
        &doc(),
        &recipients(&[&r1, &r2]),
        Some((&first, &ids(&id1))),
        at(60),
    )
    .expect("seal");
    assert_ne!(*key(&first, &id1), *key(&widened, &id2));
    assert_eq!(open(&widened, &ids(&id2)).expect("open"), doc());
    let user = |text: &str| {
        lines(text)
            .into_iter()
            .find(|l| l.starts_with("    user:"))
            .map(str::to_owned)
    };
    assert_ne!(user(&first), user(&widened));

    // Identities that cannot open the previous file: no error.
    let (stranger, _) = identity();
    let rs = recipients(&[&r1]);
    let next = seal(&doc(), &rs, Some((&first, &ids(&stranger))), at(60)).expect("seal");
    assert_ne!(*key(&first, &id1), *key(&next, &id1));
    let garbage = seal(&doc(), &rs, Some(("not: [sops", &ids(&id1))), at(60)).expect("seal");
    assert_eq!(open(&garbage, &ids(&id1)).expect("open"), doc());
}

#[test]
fn a_shared_key_serves_new_files_only_and_only_its_own_recipients() {
    let (id1, r1) = identity();
    let (_, r2) = identity();
    let rs = recipients(&[&r1]);
    let shared = SharedKey::new(&rs).expect("shared key");
    assert!(!format!("{shared:?}").contains(&r1));
    let key = |text: &str| decrypt_file(text, &ids(&id1)).expect("open").data_key;
    let a = seal_sharing(&doc(), &rs, None, at(0), &shared).expect("seal");
    let b = seal_sharing(&doc(), &rs, None, at(0), &shared).expect("seal");
    assert_eq!(*key(&a), *key(&b));
    assert_eq!(open(&b, &ids(&id1)).expect("open"), doc());
    // A value spliced from one file into another under the same key name
    // decrypts, but the file's MAC no longer matches: refused.
    let mut other = doc();
    other
        .data
        .insert("password".into(), value(b"another-password"));
    let c = seal_sharing(&other, &rs, None, at(0), &shared).expect("seal");
    let password = |text: &str| {
        lines(text)
            .into_iter()
            .find(|l| l.starts_with("    password:"))
            .map(str::to_owned)
            .expect("password line")
    };
    let spliced = a.replace(&password(&a), &password(&c));
    assert_ne!(spliced, a);
    assert!(matches!(
        open(&spliced, &ids(&id1)),
        Err(SopsError::MacMismatch)
    ));
    // A file with a previous version keeps that version's key.
    let own = seal(&doc(), &rs, None, at(0)).expect("seal");
    let mut changed = doc();
    changed.data.insert("user".into(), value(b"root"));
    let next =
        seal_sharing(&changed, &rs, Some((&own, &ids(&id1))), at(60), &shared).expect("seal");
    assert_eq!(*key(&own), *key(&next));
    assert_ne!(*key(&next), *key(&a));
    // Other recipients: the file gets a key of its own.
    let wider = recipients(&[&r1, &r2]);
    let c = seal_sharing(&doc(), &wider, None, at(0), &shared).expect("seal");
    assert_ne!(*key(&c), *key(&a));
    assert_eq!(open(&c, &ids(&id1)).expect("open"), doc());
}

#[test]
fn outline_needs_no_identity() {
    let (_, r1) = identity();
    let (_, r2) = identity();
    let sealed = seal(&doc(), &recipients(&[&r1, &r2]), None, at(0)).expect("seal");
    let o = outline(&sealed).expect("outline");
    assert_eq!((o.namespace.as_str(), o.name.as_str()), ("prod", "db"));
    assert_eq!(o.labels, doc().labels);
    assert_eq!(o.annotations, doc().annotations);
    assert_eq!(o.keys, ["binary", "empty", "n", "password", "user"]);
    assert_eq!(o.recipients, [r1, r2]);
    assert_eq!(o.lastmodified, "2026-11-18T11:06:40Z");
    assert!(matches!(outline("a: b\n"), Err(SopsError::NotSops)));
    assert!(matches!(outline(""), Err(SopsError::NotSops)));
}

#[test]
fn no_value_in_any_error() {
    let (id, r) = identity();
    let (stranger, _) = identity();
    let rs = recipients(&[&r]);
    let sealed = seal(&doc(), &rs, None, at(0)).expect("seal");
    let mut errors = vec![
        open(&sealed, &ids(&stranger)).expect_err("identity"),
        open(&sealed.replace("app: web", "app: x"), &ids(&id)).expect_err("mac"),
    ];
    let line = lines(&sealed)
        .into_iter()
        .find(|l| l.starts_with("    password:"))
        .expect("line");
    errors.push(open(&sealed.replace(line, &flip_data(line)), &ids(&id)).expect_err("ct"));
    // A value that is not base64, sealed as a raw tree.
    let mut without_data = doc();
    without_data.data.clear();
    let mut tree = manifest_tree(&without_data);
    tree.push((
        "data".into(),
        Node::Map(vec![("password".into(), str_node(&format!("{SECRET}!")))]),
    ));
    let bad = seal_tree(&tree, &rs, None, at(0), None).expect("seal");
    errors.push(open(&bad, &ids(&id)).expect_err("base64"));
    // Broken YAML around a value.
    errors.push(outline(&format!("data:\n  password: [{SECRET}\nsops: x\n")).expect_err("yaml"));
    errors.push(
        open(
            &format!("data: {{password: {SECRET}}}\nsops: 5\n"),
            &ids(&id),
        )
        .expect_err("meta"),
    );
    // A value left unencrypted where the rules say it must be.
    let plain = sealed.replace(line, &format!("    password: {SECRET}"));
    errors.push(open(&plain, &ids(&id)).expect_err("unencrypted"));
    // An identity file with a bad line.
    errors.push(
        Identities::from_text(
            &format!("# comment\nAGE-SECRET-KEY-1{SECRET}\n"),
            "keys.txt",
        )
        .expect_err("identity"),
    );
    for err in &errors {
        secret_free(&err.to_string());
        secret_free(&format!("{err:?}"));
    }
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert!(
        shown[3].contains("data.password is not valid base64"),
        "{}",
        shown[3]
    );
    assert!(shown[7].contains("line 2"), "{}", shown[7]);
    secret_free(&format!("{:?}", ids(&id)));
    secret_free(&format!("{:?}", doc()));
}

#[test]
fn string_data_merges_and_any_path_under_data_is_encrypted() {
    let (id, r) = identity();
    let mut tree = manifest_tree(&doc());
    // A label named `data` is encrypted too, as sops' regex says.
    if let Some((_, Node::Map(metadata))) = tree.iter_mut().find(|(k, _)| k == "metadata")
        && let Some((_, Node::Map(labels))) = metadata.iter_mut().find(|(k, _)| k == "labels")
    {
        labels.push(("data".into(), str_node("label-value")));
    }
    tree.push((
        "stringData".into(),
        Node::Map(vec![
            ("user".into(), str_node("from-string-data")),
            ("extra".into(), str_node("plain text")),
        ]),
    ));
    let sealed = seal_tree(&tree, &recipients(&[&r]), None, at(0), None).expect("seal");
    assert!(!sealed.contains("label-value") && !sealed.contains("from-string-data"));
    let opened = open(&sealed, &ids(&id)).expect("open");
    assert_eq!(opened.labels["data"], "label-value");
    assert_eq!(opened.data["user"].expose(), b"from-string-data");
    assert_eq!(opened.data["extra"].expose(), b"plain text");
    assert_eq!(opened.data["password"].expose(), SECRET.as_bytes());
    assert_eq!(outline(&sealed).expect("o").keys.len(), 6);
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/sops")
        .join(name)
}

#[test]
fn ssh_recipients_and_identities() {
    let mut list = Vec::new();
    for name in ["test_ed25519.pub", "test_rsa.pub"] {
        list.push(std::fs::read_to_string(fixture(name)).expect("fixture"));
    }
    let rs = Recipients::parse(&list).expect("ssh recipients");
    assert!(rs.as_strings()[0].starts_with("ssh-ed25519 "));
    let sealed = seal(&doc(), &rs, None, at(0)).expect("seal");
    for name in ["test_ed25519", "test_rsa"] {
        let ids = Identities::from_file(&fixture(name)).expect("ssh identity");
        assert_eq!(open(&sealed, &ids).expect("open"), doc(), "{name}");
    }
    assert_eq!(outline(&sealed).expect("o").recipients, rs.as_strings());
}

#[test]
fn identity_files_as_age_keygen_writes_them() {
    let (id, r) = identity();
    let (other, _) = identity();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keys.txt");
    std::fs::write(
        &path,
        format!(
            "# created: 2026-01-01T00:00:00Z\n# public key: {r}\n{}\n\n{}\n",
            other.to_string().expose_secret(),
            id.to_string().expose_secret()
        ),
    )
    .expect("write");
    let ids = Identities::from_file(&path).expect("identities");
    let sealed = seal(&doc(), &recipients(&[&r]), None, at(0)).expect("seal");
    assert_eq!(open(&sealed, &ids).expect("open"), doc());
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "# nothing\n").expect("write");
    assert!(matches!(
        Identities::from_file(&empty),
        Err(SopsError::BadIdentity { .. })
    ));
    assert!(matches!(
        Identities::from_file(&dir.path().join("missing")),
        Err(SopsError::BadIdentity { .. })
    ));
}

#[test]
fn scalars_read_back_as_the_same_strings() {
    let odd = [
        "true",
        "True",
        "yes",
        "n",
        "N",
        "off",
        "null",
        "~",
        "",
        " lead",
        "trail ",
        "1",
        "0x1F",
        "1e3",
        "1_000",
        "2026-01-01",
        "a: b",
        "a #b",
        "#x",
        "- x",
        "[x]",
        "{x}",
        "*x",
        "&x",
        "!x",
        "|",
        ">",
        "'q'",
        "\"q\"",
        "line\nbreak",
        "tab\there",
        "back\\slash",
        "ü-ñ",
        "\u{85}\u{2028}\u{feff}\u{7f}\u{1}",
        "emoji 🎉",
        "inf",
        ".inf",
        "NaN",
        "%x",
        "@x",
        "ENC[AES256_GCM,data:ab+/=,iv:x,tag:y,type:str]",
        "a:",
        "key=value,x/y",
    ];
    for text in odd {
        let yaml = format!("{}: {}\n", yaml_scalar(text), yaml_scalar(text));
        let parsed: Value = serde_yaml::from_str(&yaml).expect("yaml");
        let map = parsed.as_mapping().expect("mapping");
        let (k, v) = map.iter().next().expect("entry");
        assert_eq!(k.as_str(), Some(text), "key {yaml:?}");
        assert_eq!(v.as_str(), Some(text), "value {yaml:?}");
    }
}

#[test]
fn regexes_follow_go_search_semantics() {
    let rule = |re: &str| Rule::EncryptedRegex(regex::Regex::new(re).expect("regex"));
    let path = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let secret_values = rule(ENCRYPTED_REGEX);
    assert!(secret_values.encrypts(&path(&["data", "KEY"])));
    assert!(secret_values.encrypts(&path(&["stringData", "KEY"])));
    assert!(!secret_values.encrypts(&path(&["metadata", "name"])));
    assert!(!secret_values.encrypts(&path(&["data2"])));
    // Go's regexp.MatchString is a search: unanchored matches anywhere.
    assert!(rule("data").encrypts(&path(&["metadata"])));
    let classes = rule("^pass.ord$|^key\\.pem$|^[a-z]+_token$");
    assert!(classes.encrypts(&path(&["password"])) && classes.encrypts(&path(&["key.pem"])));
    assert!(classes.encrypts(&path(&["api_token"])) && !classes.encrypts(&path(&["keyxpem"])));
    assert_eq!(go_float(1.0), "1");
    assert_eq!(go_float(0.1), "0.1");
    assert_eq!(go_float(1e21), "1000000000000000000000");
    assert_eq!(
        go_rfc3339("2026-01-01T01:00:00.5+01:00").expect("t"),
        "2026-01-01T01:00:00+01:00"
    );
    assert_eq!(
        go_rfc3339("2026-01-01T00:00:00+00:00").expect("t"),
        "2026-01-01T00:00:00Z"
    );
}

#[test]
fn identities_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Identities>();
    assert_send_sync::<Recipients>();
    assert_send_sync::<SopsError>();
}
