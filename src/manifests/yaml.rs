//! The one place that writes YAML. Manifests are typed values; this module only lays them out,
//! quoting every string a YAML 1.1 or 1.2 reader could take for anything but a string.

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// Words that some YAML reader resolves to a boolean or null when written plain.
const NON_STRING_WORDS: &[&str] = &["y", "n", "yes", "no", "true", "false", "on", "off", "null"];

/// Serializes one value as a YAML document (no leading `---`), ending in a newline.
pub fn to_string<T: Serialize>(value: &T) -> Result<String> {
    let value = serde_json::to_value(value).map_err(|e| Error::Render(format!("serializing a manifest: {e}")))?;
    let mut out = String::new();
    match &value {
        Value::Object(map) if !map.is_empty() => write_map(map, 0, &mut out),
        Value::Array(items) if !items.is_empty() => write_seq(items, 0, &mut out),
        scalar => {
            write_scalar(scalar, &mut out);
            out.push('\n');
        }
    }
    Ok(out)
}

/// Serializes several values as one multi-document YAML stream.
pub fn to_multi_doc<T: Serialize>(values: &[T]) -> Result<String> {
    let docs = values.iter().map(to_string).collect::<Result<Vec<_>>>()?;
    Ok(docs.join("---\n"))
}

fn write_map(map: &serde_json::Map<String, Value>, indent: usize, out: &mut String) {
    for (i, (key, value)) in map.iter().enumerate() {
        if i > 0 || !out.ends_with("- ") {
            push_indent(indent, out);
        }
        write_string(key, out);
        out.push(':');
        write_nested(value, indent, out);
    }
}

fn write_seq(items: &[Value], indent: usize, out: &mut String) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 || !out.ends_with("- ") {
            push_indent(indent, out);
        }
        out.push_str("- ");
        match item {
            Value::Object(map) if !map.is_empty() => write_map(map, indent + 2, out),
            Value::Array(inner) if !inner.is_empty() => write_seq(inner, indent + 2, out),
            scalar => {
                write_flow_or_scalar(scalar, indent + 2, out);
                out.push('\n');
            }
        }
    }
}

/// Writes what follows `key:`; nested sequences sit at the key's own indentation, as kubectl writes them.
fn write_nested(value: &Value, indent: usize, out: &mut String) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            write_map(map, indent + 2, out);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            write_seq(items, indent, out);
        }
        scalar => {
            out.push(' ');
            write_flow_or_scalar(scalar, indent + 2, out);
            out.push('\n');
        }
    }
}

/// Collections here are empty ones (non-empty ones are laid out as blocks by the callers);
/// multi-line strings become literal blocks indented to `indent`.
fn write_flow_or_scalar(value: &Value, indent: usize, out: &mut String) {
    match value {
        Value::Object(_) => out.push_str("{}"),
        Value::Array(_) => out.push_str("[]"),
        Value::String(s) if is_block_safe(s) => {
            out.push('|');
            for line in s.lines() {
                out.push('\n');
                if !line.is_empty() {
                    push_indent(indent, out);
                    out.push_str(line);
                }
            }
        }
        scalar => write_scalar(scalar, out),
    }
}

/// A literal block (`|`) keeps a multi-line string readable (kustomize patches); only strings that
/// read back exactly qualify: one trailing newline, no leading space, tab, or character that needs
/// an escape, and no trailing spaces on a line.
fn is_block_safe(s: &str) -> bool {
    s.len() > 1
        && s.ends_with('\n')
        && !s.ends_with("\n\n")
        && !s.starts_with([' ', '\n'])
        && !s.contains(|c: char| c != '\n' && (c == '\t' || needs_escape(c)))
        && s.lines().all(|l| !l.ends_with(' '))
}

fn write_scalar(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(s, out),
        Value::Object(_) | Value::Array(_) => unreachable!("collections are written by write_nested"),
    }
}

fn push_indent(indent: usize, out: &mut String) {
    out.extend(std::iter::repeat_n(' ', indent));
}

/// Writes a string plain when no YAML reader could mistake it, double-quoted otherwise.
fn write_string(s: &str, out: &mut String) {
    if is_safe_plain(s) {
        out.push_str(s);
    } else {
        write_double_quoted(s, out);
    }
}

/// Plain only for identifiers and paths: a letter, `_` or `/` first, then letters, digits, `_./-`,
/// and never a word that YAML 1.1 reads as a boolean or null. Anything that starts with a digit,
/// a sign or a dot is quoted, which covers every number, date and special float form.
fn is_safe_plain(s: &str) -> bool {
    let mut chars = s.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '/');
    first_ok
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-'))
        && !NON_STRING_WORDS.contains(&s.to_ascii_lowercase().as_str())
}

/// Double-quoted with escapes for every character a YAML reader could fold, drop or misread:
/// controls, DEL, the C1 range (NEL is a line break in YAML 1.1), the Unicode line and paragraph
/// separators, the byte-order mark and the non-characters.
fn write_double_quoted(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if needs_escape(c) => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn needs_escape(c: char) -> bool {
    crate::model::naming::is_yaml_hazard(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ambiguous_strings_are_quoted_and_identifiers_are_not() {
        let cases = [
            ("app", "app"),
            ("ghcr.io/acme/shop", "ghcr.io/acme/shop"),
            ("on", "\"on\""),
            ("No", "\"No\""),
            ("y", "\"y\""),
            ("1e3", "\"1e3\""),
            ("0x1F", "\"0x1F\""),
            ("~", "\"~\""),
            ("", "\"\""),
            ("300m", "\"300m\""),
            ("2026-01-01", "\"2026-01-01\""),
            (".inf", "\".inf\""),
            ("a: b", "\"a: b\""),
            ("line\nbreak", "\"line\\nbreak\""),
            ("nel\u{85}x", "\"nel\\u0085x\""),
            ("ü", "\"ü\""),
        ];
        for (input, want) in cases {
            let mut out = String::new();
            write_string(input, &mut out);
            assert_eq!(out, want, "{input:?}");
        }
    }

    #[test]
    fn multi_line_strings_become_literal_blocks_when_they_read_back_exactly() {
        let doc = json!({"patches": [{"patch": "- op: add\n  path: /x\n"}], "odd": "a\n\n", "one": "x\n"});
        let want = "patches:\n- patch: |\n    - op: add\n      path: /x\nodd: \"a\\n\\n\"\none: |\n  x\n";
        assert_eq!(to_string(&doc).unwrap(), want);
    }

    #[test]
    fn nested_values_are_laid_out_like_kubectl() {
        let doc = json!({
            "kind": "Thing",
            "metadata": {"name": "x", "labels": {"on": "yes"}},
            "list": [{"a": 1, "b": [true, "no"]}, "plain", [], {}],
            "empty": {},
        });
        let want = "kind: Thing\nmetadata:\n  name: x\n  labels:\n    \"on\": \"yes\"\nlist:\n- a: 1\n  b:\n  - true\n  - \"no\"\n- plain\n- []\n- {}\nempty: {}\n";
        assert_eq!(to_string(&doc).unwrap(), want);
    }
}
