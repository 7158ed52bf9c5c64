//! The one place that writes YAML. Manifests are typed values; this module only lays them out,
//! quoting every string a YAML 1.1 or 1.2 reader could take for anything but a string.

use serde::Serialize;

use crate::error::{Error, Result};

/// Words that some YAML reader resolves to a boolean or null when written plain.
const NON_STRING_WORDS: &[&str] = &["y", "n", "yes", "no", "true", "false", "on", "off", "null"];

/// Serializes one value as a YAML document (no leading `---`), ending in a newline.
///
/// The value is laid out as it is serialized, without a `serde_json::Value` in between: that copy,
/// a map of owned keys per object, was half of the writing of a full sync's 10,000 environments.
/// The layout is the one the value would get: objects as blocks, sequences at their key's
/// indentation (as kubectl writes them), empty collections as `{}` and `[]`, and numbers, keys
/// and `None` as `serde_json::to_value` makes them.
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    let mut out = String::new();
    value
        .serialize(Node {
            out: &mut out,
            slot: Slot::Top,
        })
        .map_err(|e| Error::Render(format!("serializing a manifest: {e}")))?;
    Ok(out)
}

/// Serializes several values as one multi-document YAML stream.
pub fn to_multi_doc<T: Serialize>(values: &[T]) -> Result<String> {
    let docs = values.iter().map(to_string).collect::<Result<Vec<_>>>()?;
    Ok(docs.join("---\n"))
}

/// Where a value goes: the document itself, after `key:` of a map whose keys sit at `indent`, or
/// after `- ` of a sequence whose dashes sit at `indent`.
#[derive(Clone, Copy)]
enum Slot {
    Top,
    Value { indent: usize },
    Item { indent: usize },
}

impl Slot {
    /// The indentation of the keys of a map in this slot.
    fn keys(self) -> usize {
        match self {
            Slot::Top => 0,
            Slot::Value { indent } | Slot::Item { indent } => indent + 2,
        }
    }

    /// The indentation of the dashes of a sequence in this slot: a sequence under a key sits at
    /// the key's own indentation.
    fn dashes(self) -> usize {
        match self {
            Slot::Top => 0,
            Slot::Value { indent } => indent,
            Slot::Item { indent } => indent + 2,
        }
    }

    /// Starts an entry or an item at `indent`. The first one of a collection under a key starts
    /// on the next line; the first one of a collection that is a sequence item follows its `- `.
    fn start(self, first: bool, indent: usize, out: &mut String) {
        match (self, first) {
            (Slot::Item { .. }, true) => {}
            (Slot::Value { .. }, true) => {
                out.push('\n');
                push_indent(indent, out);
            }
            _ => push_indent(indent, out),
        }
    }

    /// Writes an empty collection, `{}` or `[]`.
    fn empty(self, text: &str, out: &mut String) {
        if let Slot::Value { .. } = self {
            out.push(' ');
        }
        out.push_str(text);
        out.push('\n');
    }

    /// Writes a scalar: after a key with a space; multi-line strings as literal blocks, except for
    /// a document that is only a string.
    fn scalar(self, scalar: Scalar<'_>, out: &mut String) {
        match self {
            Slot::Top => scalar.write(out),
            Slot::Value { indent } => {
                out.push(' ');
                scalar.write_flow(indent + 2, out);
            }
            Slot::Item { indent } => scalar.write_flow(indent + 2, out),
        }
        out.push('\n');
    }
}

/// A scalar, as `serde_json::to_value` would make it.
enum Scalar<'a> {
    Null,
    Bool(bool),
    /// A number's text, as `serde_json::Number` displays it.
    Number(&'a str),
    String(&'a str),
}

impl Scalar<'_> {
    fn write(&self, out: &mut String) {
        match self {
            Scalar::Null => out.push_str("null"),
            Scalar::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Scalar::Number(n) => out.push_str(n),
            Scalar::String(s) => write_string(s, out),
        }
    }

    /// Multi-line strings become literal blocks indented to `indent`.
    fn write_flow(&self, indent: usize, out: &mut String) {
        match self {
            Scalar::String(s) if is_block_safe(s) => {
                out.push('|');
                for line in s.lines() {
                    out.push('\n');
                    if !line.is_empty() {
                        push_indent(indent, out);
                        out.push_str(line);
                    }
                }
            }
            scalar => scalar.write(out),
        }
    }
}

/// Why a value has no YAML form here (a map key that is not a string, a number out of range).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Unwritable(String);

impl serde::ser::Error for Unwritable {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Unwritable(msg.to_string())
    }
}

type Written = std::result::Result<(), Unwritable>;
/// A collection opened in a slot, or why it cannot be.
type Opened<'a> = std::result::Result<Block<'a>, Unwritable>;

/// Serializes one value into its slot.
struct Node<'a> {
    out: &'a mut String,
    slot: Slot,
}

impl<'a> Node<'a> {
    fn scalar(self, scalar: Scalar<'_>) -> Written {
        self.slot.scalar(scalar, self.out);
        Ok(())
    }

    fn number(self, n: impl itoa::Integer) -> Written {
        self.scalar(Scalar::Number(itoa::Buffer::new().format(n)))
    }

    fn float(self, f: f64) -> Written {
        match serde_json::Number::from_f64(f) {
            Some(n) => self.scalar(Scalar::Number(&n.to_string())),
            None => self.scalar(Scalar::Null),
        }
    }

    fn collection(self, kind: Kind) -> Block<'a> {
        Block {
            out: self.out,
            slot: self.slot,
            kind,
            first: true,
        }
    }

    /// `{variant: [...]}` or `{variant: {...}}`: the collection of a variant's data.
    fn variant_block(self, variant: &'static str, kind: Kind) -> Block<'a> {
        let (out, slot) = self.variant(variant);
        Node { out, slot }.collection(kind)
    }

    /// `{variant: …}`, the form serde_json gives an enum variant with data: a map of one entry,
    /// whose value goes in the returned slot.
    fn variant(self, variant: &'static str) -> (&'a mut String, Slot) {
        let mut map = self.collection(Kind::Map);
        map.key(variant);
        let indent = map.slot.keys();
        (map.out, Slot::Value { indent })
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Map,
    Seq,
}

/// A map or a sequence being written: its entries are laid out as they come.
struct Block<'a> {
    out: &'a mut String,
    slot: Slot,
    kind: Kind,
    first: bool,
}

impl Block<'_> {
    fn start_entry(&mut self) {
        let indent = self.slot.keys();
        self.slot.start(self.first, indent, self.out);
        self.first = false;
    }

    fn key(&mut self, key: &str) {
        self.start_entry();
        write_string(key, self.out);
        self.out.push(':');
    }

    fn value<T: Serialize + ?Sized>(&mut self, value: &T) -> Written {
        value.serialize(Node {
            out: self.out,
            slot: Slot::Value {
                indent: self.slot.keys(),
            },
        })
    }

    fn item<T: Serialize + ?Sized>(&mut self, item: &T) -> Written {
        let indent = self.slot.dashes();
        self.slot.start(self.first, indent, self.out);
        self.first = false;
        self.out.push_str("- ");
        item.serialize(Node {
            out: self.out,
            slot: Slot::Item { indent },
        })
    }

    fn finish(self) -> Written {
        if self.first {
            self.slot
                .empty(if self.kind == Kind::Map { "{}" } else { "[]" }, self.out);
        }
        Ok(())
    }
}

impl<'a> serde::Serializer for Node<'a> {
    type Ok = ();
    type Error = Unwritable;
    type SerializeSeq = Block<'a>;
    type SerializeTuple = Block<'a>;
    type SerializeTupleStruct = Block<'a>;
    type SerializeTupleVariant = Block<'a>;
    type SerializeMap = Block<'a>;
    type SerializeStruct = Block<'a>;
    type SerializeStructVariant = Block<'a>;

    fn serialize_bool(self, v: bool) -> Written {
        self.scalar(Scalar::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Written {
        self.number(v)
    }
    fn serialize_i16(self, v: i16) -> Written {
        self.number(v)
    }
    fn serialize_i32(self, v: i32) -> Written {
        self.number(v)
    }
    fn serialize_i64(self, v: i64) -> Written {
        self.number(v)
    }
    fn serialize_i128(self, v: i128) -> Written {
        let v = i64::try_from(v).map_err(|_| Unwritable("number out of range".into()))?;
        self.number(v)
    }
    fn serialize_u8(self, v: u8) -> Written {
        self.number(v)
    }
    fn serialize_u16(self, v: u16) -> Written {
        self.number(v)
    }
    fn serialize_u32(self, v: u32) -> Written {
        self.number(v)
    }
    fn serialize_u64(self, v: u64) -> Written {
        self.number(v)
    }
    fn serialize_u128(self, v: u128) -> Written {
        let v = u64::try_from(v).map_err(|_| Unwritable("number out of range".into()))?;
        self.number(v)
    }
    fn serialize_f32(self, v: f32) -> Written {
        self.float(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Written {
        self.float(v)
    }
    fn serialize_char(self, v: char) -> Written {
        self.scalar(Scalar::String(v.encode_utf8(&mut [0u8; 4])))
    }
    fn serialize_str(self, v: &str) -> Written {
        self.scalar(Scalar::String(v))
    }
    /// A sequence of numbers, as serde_json makes bytes.
    fn serialize_bytes(self, v: &[u8]) -> Written {
        let mut seq = self.collection(Kind::Seq);
        for b in v {
            seq.item(b)?;
        }
        seq.finish()
    }
    fn serialize_none(self) -> Written {
        self.scalar(Scalar::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Written {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Written {
        self.scalar(Scalar::Null)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Written {
        self.scalar(Scalar::Null)
    }
    fn serialize_unit_variant(self, _name: &'static str, _index: u32, variant: &'static str) -> Written {
        self.scalar(Scalar::String(variant))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _name: &'static str, value: &T) -> Written {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Written {
        let (out, slot) = self.variant(variant);
        value.serialize(Node { out, slot })
    }
    fn serialize_seq(self, _len: Option<usize>) -> Opened<'a> {
        Ok(self.collection(Kind::Seq))
    }
    fn serialize_tuple(self, _len: usize) -> Opened<'a> {
        Ok(self.collection(Kind::Seq))
    }
    fn serialize_tuple_struct(self, _name: &'static str, _len: usize) -> Opened<'a> {
        Ok(self.collection(Kind::Seq))
    }
    fn serialize_tuple_variant(self, _: &'static str, _: u32, variant: &'static str, _: usize) -> Opened<'a> {
        Ok(self.variant_block(variant, Kind::Seq))
    }
    fn serialize_map(self, _len: Option<usize>) -> Opened<'a> {
        Ok(self.collection(Kind::Map))
    }
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Opened<'a> {
        Ok(self.collection(Kind::Map))
    }
    fn serialize_struct_variant(self, _: &'static str, _: u32, variant: &'static str, _: usize) -> Opened<'a> {
        Ok(self.variant_block(variant, Kind::Map))
    }
}

/// The sequence forms serde has (a sequence, a tuple, a tuple struct, a tuple variant's data):
/// each element an item.
macro_rules! items {
    ($($form:ident :: $add:ident),*) => {$(
        impl serde::ser::$form for Block<'_> {
            type Ok = ();
            type Error = Unwritable;
            fn $add<T: Serialize + ?Sized>(&mut self, value: &T) -> Written {
                self.item(value)
            }
            fn end(self) -> Written {
                self.finish()
            }
        }
    )*};
}

items!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

/// A struct and a struct variant's data: each field an entry.
macro_rules! fields {
    ($($form:ident),*) => {$(
        impl serde::ser::$form for Block<'_> {
            type Ok = ();
            type Error = Unwritable;
            fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Written {
                self.key(key);
                self.value(value)
            }
            fn end(self) -> Written {
                self.finish()
            }
        }
    )*};
}

fields!(SerializeStruct, SerializeStructVariant);

impl serde::ser::SerializeMap for Block<'_> {
    type Ok = ();
    type Error = Unwritable;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Written {
        self.start_entry();
        key.serialize(Key(self.out))?;
        self.out.push(':');
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Written {
        self.value(value)
    }
    fn end(self) -> Written {
        self.finish()
    }
}

/// Writes a map key as serde_json's key serializer makes its text: strings, and numbers, booleans
/// and unit variants as their text (then quoted, as such a string is); anything else is refused.
struct Key<'a>(&'a mut String);

impl Key<'_> {
    fn text(self, text: &str) -> Written {
        write_string(text, self.0);
        Ok(())
    }
}

/// What a key serializer answers for a collection: no key is one.
type Refused = std::result::Result<serde::ser::Impossible<(), Unwritable>, Unwritable>;

fn not_a_key() -> Unwritable {
    Unwritable("key must be a string".into())
}

impl serde::Serializer for Key<'_> {
    type Ok = ();
    type Error = Unwritable;
    type SerializeSeq = serde::ser::Impossible<(), Unwritable>;
    type SerializeTuple = serde::ser::Impossible<(), Unwritable>;
    type SerializeTupleStruct = serde::ser::Impossible<(), Unwritable>;
    type SerializeTupleVariant = serde::ser::Impossible<(), Unwritable>;
    type SerializeMap = serde::ser::Impossible<(), Unwritable>;
    type SerializeStruct = serde::ser::Impossible<(), Unwritable>;
    type SerializeStructVariant = serde::ser::Impossible<(), Unwritable>;

    fn serialize_bool(self, v: bool) -> Written {
        self.text(if v { "true" } else { "false" })
    }
    fn serialize_i8(self, v: i8) -> Written {
        self.serialize_i64(v.into())
    }
    fn serialize_i16(self, v: i16) -> Written {
        self.serialize_i64(v.into())
    }
    fn serialize_i32(self, v: i32) -> Written {
        self.serialize_i64(v.into())
    }
    fn serialize_i64(self, v: i64) -> Written {
        self.text(itoa::Buffer::new().format(v))
    }
    fn serialize_u8(self, v: u8) -> Written {
        self.serialize_u64(v.into())
    }
    fn serialize_u16(self, v: u16) -> Written {
        self.serialize_u64(v.into())
    }
    fn serialize_u32(self, v: u32) -> Written {
        self.serialize_u64(v.into())
    }
    fn serialize_u64(self, v: u64) -> Written {
        self.text(itoa::Buffer::new().format(v))
    }
    fn serialize_f32(self, v: f32) -> Written {
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Written {
        let n = serde_json::Number::from_f64(v).ok_or_else(|| Unwritable("float key must be finite".into()))?;
        self.text(&n.to_string())
    }
    fn serialize_char(self, v: char) -> Written {
        self.text(v.encode_utf8(&mut [0u8; 4]))
    }
    fn serialize_str(self, v: &str) -> Written {
        self.text(v)
    }
    fn serialize_bytes(self, _v: &[u8]) -> Written {
        Err(not_a_key())
    }
    fn serialize_none(self) -> Written {
        Err(not_a_key())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Written {
        Err(not_a_key())
    }
    fn serialize_unit(self) -> Written {
        Err(not_a_key())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Written {
        Err(not_a_key())
    }
    fn serialize_unit_variant(self, _name: &'static str, _index: u32, variant: &'static str) -> Written {
        self.text(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _name: &'static str, value: &T) -> Written {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(self, _: &str, _: u32, _: &str, _: &T) -> Written {
        Err(not_a_key())
    }
    fn serialize_seq(self, _: Option<usize>) -> Refused {
        Err(not_a_key())
    }
    fn serialize_tuple(self, _: usize) -> Refused {
        Err(not_a_key())
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Refused {
        Err(not_a_key())
    }
    fn serialize_tuple_variant(self, _: &'static str, _: u32, _: &'static str, _: usize) -> Refused {
        Err(not_a_key())
    }
    fn serialize_map(self, _: Option<usize>) -> Refused {
        Err(not_a_key())
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Refused {
        Err(not_a_key())
    }
    fn serialize_struct_variant(self, _: &'static str, _: u32, _: &'static str, _: usize) -> Refused {
        Err(not_a_key())
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

fn push_indent(indent: usize, out: &mut String) {
    const SPACES: &str = "                                ";
    let mut left = indent;
    while left > 0 {
        let n = left.min(SPACES.len());
        out.push_str(&SPACES[..n]);
        left -= n;
    }
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
        && !NON_STRING_WORDS.iter().any(|w| w.eq_ignore_ascii_case(s))
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

    /// Every kind of serde data a manifest type can make, written directly, is laid out as its
    /// `serde_json::to_value` form is: `None` and units as `null`, variants as serde_json tags
    /// them, number keys as quoted text, bytes as numbers.
    #[test]
    fn a_typed_value_is_written_as_its_json_value_would_be() {
        #[derive(Serialize)]
        struct Unit;
        #[derive(Serialize)]
        struct Wrapped(u16);
        #[derive(Serialize)]
        struct Pair(i8, &'static str);
        #[derive(Serialize)]
        enum Shape {
            Plain,
            Tagged(Vec<u8>),
            Tuple(i32, bool),
            Empty(),
            Fields { side: f64, name: Option<String> },
        }
        #[derive(Serialize)]
        struct Everything {
            none: Option<u8>,
            some: Option<&'static str>,
            unit: (),
            unit_struct: Unit,
            wrapped: Wrapped,
            pair: Pair,
            shapes: Vec<Shape>,
            numbers: (i64, u64, i128, u128, f32, f64, f64),
            char: char,
            #[serde(with = "serde_bytes_as_slice")]
            bytes: Vec<u8>,
            by_number: std::collections::BTreeMap<i32, &'static str>,
            by_flag: std::collections::BTreeMap<bool, Vec<()>>,
            nested: Vec<Vec<std::collections::BTreeMap<String, Vec<u8>>>>,
            block: &'static str,
            empty_string: &'static str,
        }
        mod serde_bytes_as_slice {
            pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(v)
            }
        }
        let value = Everything {
            none: None,
            some: Some("on"),
            unit: (),
            unit_struct: Unit,
            wrapped: Wrapped(8080),
            pair: Pair(-3, "x"),
            shapes: vec![
                Shape::Plain,
                Shape::Tagged(vec![]),
                Shape::Tagged(vec![1, 2]),
                Shape::Tuple(-1, false),
                Shape::Empty(),
                Shape::Fields { side: 0.5, name: None },
            ],
            numbers: (i64::MIN, u64::MAX, -5, 7, 0.1, f64::NAN, 1e300),
            char: '"',
            bytes: vec![0, 255],
            by_number: [(-1, "minus"), (2, "two")].into_iter().collect(),
            by_flag: [(true, vec![()]), (false, vec![])].into_iter().collect(),
            nested: vec![
                vec![],
                vec![[("k".to_string(), vec![9])].into_iter().collect()],
                vec![Default::default()],
            ],
            block: "line one\nline two\n",
            empty_string: "",
        };
        let direct = to_string(&value).unwrap();
        let via_json = to_string(&serde_json::to_value(&value).unwrap()).unwrap();
        assert_eq!(direct, via_json);
        for part in [
            "none: null\n",
            "some: \"on\"\n",
            "unit: null\n",
            "wrapped: 8080\n",
            "pair:\n- -3\n- x\n",
            "shapes:\n- Plain\n- Tagged: []\n- Tagged:\n  - 1\n  - 2\n- Tuple:\n  - -1\n  - false\n- Empty: []\n- Fields:\n    side: 0.5\n    name: null\n",
            "- 0.10000000149011612\n- null\n- 1e+300\n",
            "by_number:\n  \"-1\": minus\n  \"2\": two\n",
            "by_flag:\n  \"false\": []\n  \"true\":\n  - null\n",
            "nested:\n- []\n- - k:\n    - 9\n- - {}\n",
            "block: |\n  line one\n  line two\n",
        ] {
            assert!(direct.contains(part), "{part:?} not in\n{direct}");
        }
    }

    #[test]
    fn a_document_that_is_empty_or_a_scalar_is_one_line() {
        assert_eq!(to_string(&json!({})).unwrap(), "{}\n");
        assert_eq!(to_string(&json!([])).unwrap(), "[]\n");
        assert_eq!(to_string(&json!("two\nlines\n")).unwrap(), "\"two\\nlines\\n\"\n");
        assert_eq!(to_string(&json!(null)).unwrap(), "null\n");
        let keyed_by_list = std::collections::BTreeMap::from([(vec![1], 1)]);
        let e = to_string(&keyed_by_list).unwrap_err();
        assert!(e.to_string().contains("key must be a string"), "{e}");
    }

    fn any_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let text = prop_oneof![
            "[a-z]{0,6}",
            "\\PC{0,8}",
            Just("no".to_string()),
            Just("- x\n  y: 1\n".to_string()),
            Just(" lead\n".to_string()),
        ];
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            text.clone().prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
                proptest::collection::vec((text.clone(), inner), 0..5)
                    .prop_map(|entries| serde_json::Value::Object(entries.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// What is written reads back, with a YAML reader, as the value that was written.
        #[test]
        fn any_value_reads_back_as_itself(value in any_json()) {
            let text = to_string(&value).unwrap();
            let back: serde_json::Value = serde_yaml::from_str(&text).unwrap();
            proptest::prop_assert_eq!(back, value, "{}", text);
        }
    }
}
