//! Printing a sealed tree in the exact layout of `sops -e`.

use std::borrow::Cow;

use crate::metadata::AgeEntry;
use crate::{ENCRYPTED_REGEX, SOPS_VERSION};

/// A tree ready to print: every leaf is its final YAML string.
pub(crate) enum Out {
    Leaf(String),
    Map(Vec<(String, Out)>),
}

/// sops' YAML store indents by 4 (`stores/yaml/store.go`, `IndentDefault`).
pub(crate) const INDENT: usize = 4;

/// Prints the file in the layout of `sops -e` (yaml.v3, indent 4, metadata
/// fields in `stores/stores.go` order). Every scalar is printed so that both
/// yaml.v3 and serde_yaml read back the same string.
pub(crate) fn emit(
    tree: &[(String, Out)],
    age: &[AgeEntry],
    lastmodified: &str,
    mac: &str,
) -> String {
    let mut out = String::new();
    emit_entries(&mut out, tree, 0);
    out.push_str("sops:\n");
    let pad = " ".repeat(INDENT);
    out.push_str(&format!("{pad}age:\n"));
    for entry in age {
        out.push_str(&format!(
            "{pad}{pad}- recipient: {}\n",
            yaml_scalar(&entry.recipient)
        ));
        out.push_str(&format!("{pad}{pad}  enc: |\n"));
        for line in entry.enc.lines() {
            out.push_str(&format!("{pad}{pad}{pad}{line}\n"));
        }
    }
    out.push_str(&format!(
        "{pad}lastmodified: {}\n",
        double_quoted(lastmodified)
    ));
    out.push_str(&format!("{pad}mac: {}\n", yaml_scalar(mac)));
    out.push_str(&format!("{pad}encrypted_regex: {ENCRYPTED_REGEX}\n"));
    out.push_str(&format!("{pad}version: {SOPS_VERSION}\n"));
    out
}

pub(crate) fn emit_entries(out: &mut String, entries: &[(String, Out)], indent: usize) {
    for (key, value) in entries {
        out.push_str(&" ".repeat(indent));
        out.push_str(&yaml_scalar(key));
        match value {
            // Multi-line text as a literal block, so a change to one line
            // (one key's source) is a one-line diff.
            Out::Leaf(text) if is_block_safe(text) => {
                out.push_str(": |\n");
                let pad = " ".repeat(indent + INDENT);
                for line in text.lines() {
                    out.push_str(&pad);
                    out.push_str(line);
                    out.push('\n');
                }
            }
            Out::Leaf(text) => {
                out.push_str(": ");
                out.push_str(&yaml_scalar(text));
                out.push('\n');
            }
            Out::Map(children) if children.is_empty() => out.push_str(": {}\n"),
            Out::Map(children) => {
                out.push_str(":\n");
                emit_entries(out, children, indent + INDENT);
            }
        }
    }
}

/// Text a `|` block keeps exactly: several lines, one final newline, no
/// leading space or empty line, and only printable characters.
pub(crate) fn is_block_safe(text: &str) -> bool {
    text.ends_with('\n')
        && !text.ends_with("\n\n")
        && text.lines().count() > 1
        && text
            .lines()
            .all(|l| !l.is_empty() && !l.starts_with([' ', '#']) && !l.ends_with(' '))
        && text.chars().all(|c| c == '\n' || (' '..='~').contains(&c))
}

/// Plain when that is unambiguous to every YAML reader, else double-quoted.
pub(crate) fn yaml_scalar(text: &str) -> Cow<'_, str> {
    if is_plain_safe(text) {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(double_quoted(text))
    }
}

/// Conservative: starts with a letter (so never a number, date, null or
/// indicator), only characters that cannot start a comment or a mapping
/// value, and not a word some YAML version reads as a boolean or null.
pub(crate) fn is_plain_safe(text: &str) -> bool {
    let mut chars = text.chars();
    let (Some(first), second) = (chars.next(), chars.next()) else {
        return false;
    };
    // `.dockerconfigjson`, `_x`: a letter right after `.`/`_` is no number.
    let starts_well = first.is_ascii_alphabetic()
        || (matches!(first, '.' | '_') && second.is_some_and(|c| c.is_ascii_alphabetic()));
    if !starts_well
        || text.ends_with(' ')
        || text.ends_with(':')
        || text.contains(": ")
        || !text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " _./-+=,[]:@".contains(c))
    {
        return false;
    }
    let lower = text.to_ascii_lowercase();
    !matches!(
        lower.as_str(),
        "y" | "n"
            | "yes"
            | "no"
            | "on"
            | "off"
            | "true"
            | "false"
            | "null"
            | "inf"
            | "infinity"
            | "nan"
            | ".inf"
            | ".nan"
    )
}

/// A YAML double-quoted scalar; escapes everything YAML does not allow raw.
pub(crate) fn double_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            ' '..='~' => out.push(c),
            // Line and paragraph separators are line breaks to YAML 1.1 readers.
            '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{:04X}", c as u32)),
            '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fefe}' | '\u{ff00}'..='\u{fffd}' => {
                out.push(c)
            }
            c if (c as u32) >= 0x10000 => out.push(c),
            c if (c as u32) <= 0xff => out.push_str(&format!("\\x{:02X}", c as u32)),
            c => out.push_str(&format!("\\u{:04X}", c as u32)),
        }
    }
    out.push('"');
    out
}
