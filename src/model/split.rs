//! Finding the elements of a JSON array of objects without parsing them: a listing of 10,000 PRs
//! is 3.4 MB, of which a settled run builds one element. A validating parser spends about 4 ms
//! walking every value only to find where each element ends; this finds the ends 64 bytes at a
//! time from where the quotes and braces are, the way simdjson's stage 1 does (Langdale and
//! Lemire, "Parsing Gigabytes of JSON per Second", 2019, section 3.1).
//!
//! It does not check what is inside an element. That is sound for how [`super::pr::Listing`] uses
//! it: an element is either byte for byte one that was parsed whole before (so it is valid JSON)
//! or it is parsed now. What lies between the elements is checked here, byte by byte. So when every
//! element is one or the other, the whole text is a valid JSON array, split exactly where a parser
//! splits it.

use std::ops::Range;

/// The byte ranges of the elements of `json`, a JSON array whose elements are objects, as a
/// parser would delimit them (no surrounding whitespace). `None` when the text between the
/// elements is not that of such an array, or an object does not close: the caller parses the
/// text whole, for the error a parser names.
pub fn array_of_objects(json: &[u8]) -> Option<Vec<Range<usize>>> {
    let mut elements = Vec::with_capacity(json.len() / 256);
    let mut first = true;
    let rest = scan(json, &mut first, &mut |range| elements.push(range))?;
    closes(&json[rest..], first).then_some(elements)
}

/// [`array_of_objects`] over a text read piece by piece into a buffer of its own, which holds
/// only what follows the last element found: each element is handed over, with its place in the
/// text, while it is in the buffer, so a listing of 3.4 MB is split and digested in 64 kB.
pub struct Stream {
    buf: Vec<u8>,
    /// How much of `buf` holds text.
    len: usize,
    /// Where `buf[0]` is in the text.
    base: usize,
    /// No element found yet.
    first: bool,
}

impl Stream {
    pub fn new(capacity: usize) -> Stream {
        Stream {
            buf: vec![0; capacity.max(64)],
            len: 0,
            base: 0,
            first: true,
        }
    }

    /// The space the next piece of text goes into, never empty: the buffer doubles when an
    /// element not closed yet fills it.
    pub fn space(&mut self) -> &mut [u8] {
        if self.len == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        &mut self.buf[self.len..]
    }

    /// `n` more bytes of text are in [`Stream::space`]: each element that closes in them is
    /// given to `found` with its range in the text and its bytes. `None` when the text between
    /// the elements is not that of an array of objects, as [`array_of_objects`] refuses it.
    pub fn filled(&mut self, n: usize, found: &mut impl FnMut(Range<usize>, &[u8])) -> Option<()> {
        self.len += n;
        let (buf, base) = (&self.buf[..self.len], self.base);
        // The scan starts where the last one left off: just after an element (or at the start),
        // outside any string, where nothing carries over.
        let rest = scan(buf, &mut self.first, &mut |range| {
            found(base + range.start..base + range.end, &buf[range]);
        })?;
        self.buf.copy_within(rest..self.len, 0);
        self.len -= rest;
        self.base += rest;
        Some(())
    }

    /// The text has ended: whether it closed the array.
    pub fn closed(&self) -> bool {
        closes(&self.buf[..self.len], self.first)
    }
}

/// Gives `found` the range of each element that closes in `text`, which starts between elements
/// at depth 0 (before the array's `[` while `first`, which the first element found clears).
/// Gives where the text after the last element found begins: text between elements not checked
/// yet, or an element that does not close in `text`. `None` when the text between elements is
/// not an array's, or a brace closes what was not opened.
fn scan(text: &[u8], first: &mut bool, found: &mut impl FnMut(Range<usize>)) -> Option<usize> {
    // Where the text between elements, not yet checked, begins.
    let mut gap = 0;
    let mut depth = 0u32;
    let mut start = 0;
    // Carried from one block to the next: inside a string; the block's last byte escapes the
    // next block's first.
    let mut in_string = 0u64;
    let mut escape_next = false;
    for (index, block) in text.chunks(64).enumerate() {
        let base = index * 64;
        let masks = Masks::of(block);
        let escaped = escaped(masks.backslash, &mut escape_next);
        let quotes = masks.quote & !escaped;
        let inside = prefix_xor(quotes) ^ in_string;
        in_string = 0u64.wrapping_sub(inside >> 63);
        let mut braces = (masks.open | masks.close) & !inside;
        while braces != 0 {
            let bit = braces.trailing_zeros() as usize;
            braces &= braces - 1;
            let at = base + bit;
            if masks.open >> bit & 1 == 1 {
                if depth == 0 {
                    if !between(&text[gap..at], if *first { b'[' } else { b',' }) {
                        return None;
                    }
                    start = at;
                }
                depth += 1;
            } else {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    found(start..at + 1);
                    *first = false;
                    gap = at + 1;
                }
            }
        }
    }
    Some(gap)
}

/// Whether `tail`, the text after the last element (all of it when there is none, `first`),
/// closes the array.
fn closes(tail: &[u8], first: bool) -> bool {
    if first {
        // `[` and `]`, whitespace around and between them.
        let inner = trim(tail);
        inner.len() >= 2
            && inner[0] == b'['
            && inner[inner.len() - 1] == b']'
            && trim(&inner[1..inner.len() - 1]).is_empty()
    } else {
        between(tail, b']')
    }
}

/// Whether `gap` is JSON whitespace around exactly one `sep`.
fn between(gap: &[u8], sep: u8) -> bool {
    matches!(trim(gap), [only] if *only == sep)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let start = bytes.iter().position(|b| !ws(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !ws(b)).map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// Where a block of up to 64 bytes holds each byte that matters, one bit per byte.
struct Masks {
    quote: u64,
    backslash: u64,
    open: u64,
    close: u64,
}

impl Masks {
    fn of(block: &[u8]) -> Masks {
        // Only the last block, short, is copied: padded with whitespace, which matters to none.
        let mut padded = [b' '; 64];
        let block: &[u8; 64] = match block.try_into() {
            Ok(full) => full,
            Err(_) => {
                padded[..block.len()].copy_from_slice(block);
                &padded
            }
        };
        let mut masks = Masks {
            quote: 0,
            backslash: 0,
            open: 0,
            close: 0,
        };
        for (i, part) in block.chunks_exact(16).enumerate() {
            let part: &[u8; 16] = part.try_into().expect("16 bytes");
            let shift = i * 16;
            masks.quote |= u64::from(where_is(part, b'"')) << shift;
            masks.backslash |= u64::from(where_is(part, b'\\')) << shift;
            masks.open |= u64::from(where_is(part, b'{')) << shift;
            masks.close |= u64::from(where_is(part, b'}')) << shift;
        }
        masks
    }
}

/// Bit i says `bytes[i] == wanted`. SSE2, which every x86-64 has: a byte-at-a-time loop made
/// this split slower than the parser it replaces.
#[cfg(target_arch = "x86_64")]
fn where_is(bytes: &[u8; 16], wanted: u8) -> u16 {
    use std::arch::x86_64::{__m128i, _mm_cmpeq_epi8, _mm_movemask_epi8, _mm_set1_epi8};
    // SAFETY: `__m128i` is 16 bytes with no invalid bit patterns, the size of `bytes`; SSE2 is
    // part of x86-64 itself, so the instructions are there on every machine this is built for.
    unsafe {
        let bytes = std::mem::transmute::<[u8; 16], __m128i>(*bytes);
        _mm_movemask_epi8(_mm_cmpeq_epi8(bytes, _mm_set1_epi8(wanted as i8))) as u16
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn where_is(bytes: &[u8; 16], wanted: u8) -> u16 {
    where_is_by_words(bytes, wanted)
}

/// [`where_is`] eight bytes to a word: a byte equal to `wanted` is a zero byte of the word xor
/// `wanted` in every byte, and each zero byte's top bit is gathered by one multiplication.
#[cfg_attr(target_arch = "x86_64", allow(dead_code, reason = "tested against the SSE2 form"))]
fn where_is_by_words(bytes: &[u8; 16], wanted: u8) -> u16 {
    const LOW: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let mut mask = 0u16;
    for (i, word) in bytes.chunks_exact(8).enumerate() {
        let word = u64::from_le_bytes(word.try_into().expect("8 bytes")) ^ (u64::from(wanted) * 0x0101_0101_0101_0101);
        // 0x80 in each byte that is zero, and only there.
        let zero = !(((word & LOW) + LOW) | word | LOW);
        let bits = ((zero >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u16;
        mask |= bits << (i * 8);
    }
    mask
}

/// The bytes a backslash escapes: the one after each backslash that is not escaped itself.
/// `carry` says the block's first byte is escaped, and is set for the next block's.
fn escaped(backslash: u64, carry: &mut bool) -> u64 {
    let mut escaped = u64::from(*carry);
    let mut left = backslash & !escaped;
    *carry = false;
    while left != 0 {
        let bit = left.trailing_zeros();
        if bit == 63 {
            *carry = true;
            break;
        }
        escaped |= 1 << (bit + 1);
        // The escaped byte, a backslash or not, escapes nothing.
        left &= !(3 << bit);
    }
    escaped
}

/// Bit i of the result is the parity of the set bits 0..=i of `x`: between an opening quote
/// (included) and its closing quote (excluded), set.
fn prefix_xor(mut x: u64) -> u64 {
    for shift in [1, 2, 4, 8, 16, 32] {
        x ^= x << shift;
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The ranges a parser gives.
    fn parsed(json: &str) -> Option<Vec<Range<usize>>> {
        let raw: Vec<&serde_json::value::RawValue> = serde_json::from_str(json).ok()?;
        raw.iter()
            .map(|element| {
                let text = element.get();
                text.starts_with('{').then(|| {
                    let start = text.as_ptr() as usize - json.as_ptr() as usize;
                    start..start + text.len()
                })
            })
            .collect()
    }

    #[test]
    fn bytes_are_found_alike_sixteen_and_eight_at_a_time() {
        let bytes: Vec<u8> = (0..=255).chain([b'"', b'{', 0, 0x80, 0xff, b'"']).collect();
        for window in bytes.windows(16) {
            let part: &[u8; 16] = window.try_into().unwrap();
            for wanted in [b'"', b'\\', b'{', b'}', 0, 0x80, 0xff] {
                let want = (0..16).fold(0u16, |m, i| m | (u16::from(part[i] == wanted) << i));
                assert_eq!(where_is(part, wanted), want);
                assert_eq!(where_is_by_words(part, wanted), want);
            }
        }
    }

    #[test]
    fn elements_end_where_a_parser_ends_them() {
        let cases = [
            "[]",
            " [ \n ] ",
            "[{}]",
            r#"[{"a":"}"},{"b":"{\"}"}]"#,
            r#"[{"a":"\\"},{"b":"x\\\"}{"}]"#,
            "[ {\"a\": [ {\"b\": {}} ]} ,\n\t{\"c\": \"]\"} ]",
        ];
        for json in cases {
            assert_eq!(array_of_objects(json.as_bytes()), parsed(json), "{json}");
            assert!(parsed(json).is_some(), "{json}");
        }
    }

    #[test]
    fn what_is_not_an_array_of_objects_between_its_elements_is_refused() {
        let cases = [
            "",
            "{}",
            "[{}",
            "[{},]",
            "[,{}]",
            "[{}{}]",
            "[{},,{}]",
            "[{}] x",
            "x[{}]",
            "[1]",
            "[{}, 1]",
            r#"["{}"]"#,
            "[{}]]",
            "[[{}]]",
            "[{}}]",
            r#"[{"a":"}]"#,
            "[",
            "]",
        ];
        for json in cases {
            assert_eq!(array_of_objects(json.as_bytes()), None, "{json}");
        }
    }

    #[test]
    fn escapes_and_strings_carry_across_blocks() {
        // A backslash as a block's last byte, and a string open across the block's end.
        for pad in 0..70 {
            let json = format!(
                r#"[{{"{}":"x\\\"}}{{\\\\"}},{{"a":"{}"}}]"#,
                "k".repeat(pad),
                "}".repeat(pad)
            );
            assert_eq!(array_of_objects(json.as_bytes()), parsed(&json), "{json}");
        }
    }

    /// Text made of the bytes that matter to the split, and some that do not.
    fn strings() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("\""),
                Just("\\"),
                Just("{"),
                Just("}"),
                Just("["),
                Just("]"),
                Just(","),
                Just(":"),
                Just(" "),
                Just("a"),
                Just("1"),
                Just("\\\""),
                Just("\"a\":"),
                Just("é"),
                Just("\n"),
            ],
            0..60,
        )
        .prop_map(|parts| parts.concat())
    }

    /// Valid arrays of objects whose strings hold those bytes, escaped.
    fn arrays() -> impl Strategy<Value = String> {
        let value = strings().prop_map(serde_json::Value::String);
        let object = proptest::collection::btree_map(strings(), value, 0..4)
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect()));
        let nested = object.prop_recursive(3, 16, 3, |inner| {
            proptest::collection::vec(inner, 0..3)
                .prop_map(|items| serde_json::json!({ "items": items, "one": {"x": "}{"} }))
        });
        (proptest::collection::vec(nested, 0..5), any::<bool>()).prop_map(|(items, pretty)| {
            let array = serde_json::Value::Array(items);
            if pretty {
                serde_json::to_string_pretty(&array).unwrap()
            } else {
                serde_json::to_string(&array).unwrap()
            }
        })
    }

    /// `json` through a [`Stream`] of `capacity`, read `piece` bytes at a time: the elements
    /// found, each with its bytes checked, and whether the array closed; `None` when refused.
    fn streamed(json: &[u8], capacity: usize, piece: usize) -> Option<Vec<Range<usize>>> {
        let mut stream = Stream::new(capacity);
        let mut found = Vec::new();
        for part in json.chunks(piece.max(1)) {
            let mut part = part;
            while !part.is_empty() {
                let space = stream.space();
                let n = space.len().min(part.len());
                space[..n].copy_from_slice(&part[..n]);
                part = &part[n..];
                stream.filled(n, &mut |range: Range<usize>, bytes: &[u8]| {
                    assert_eq!(bytes, &json[range.clone()]);
                    found.push(range);
                })?;
            }
        }
        stream.closed().then_some(found)
    }

    #[test]
    fn a_stream_splits_as_the_whole_text_splits_across_every_piece_size() {
        let long = format!(r#"{{"body":"{}\\"}}"#, "}{\\\"".repeat(40));
        let json = format!(r#"[ {{"a":"}}"}},{long} ,{{"b":"x\\\"}}{{"}},{long}]"#);
        let want = array_of_objects(json.as_bytes());
        assert_eq!(want.as_ref().map(Vec::len), Some(4));
        for piece in 1..json.len() + 1 {
            // Smaller than an element, so the buffer grows; and larger than the text.
            assert_eq!(streamed(json.as_bytes(), 64, piece), want, "pieces of {piece}");
            assert_eq!(streamed(json.as_bytes(), 4096, piece), want, "pieces of {piece}");
        }
        for refused in ["[{}", "[{},]", "[{}{}]", "[{}] x", r#"["{}"]"#, "[{}}]", "", "[ ]]"] {
            for piece in 1..4 {
                assert_eq!(streamed(refused.as_bytes(), 64, piece), None, "{refused}");
            }
        }
        assert_eq!(streamed(b" [ ] ", 64, 2), Some(Vec::new()));
    }

    proptest! {
        #[test]
        fn a_valid_array_splits_as_a_parser_splits_it(json in arrays()) {
            let split = array_of_objects(json.as_bytes());
            prop_assert!(split.is_some());
            prop_assert_eq!(split, parsed(&json));
        }

        #[test]
        fn a_stream_splits_any_text_as_the_whole_text_splits(
            json in prop_oneof![arrays(), strings().prop_map(|s| format!("[{s}]"))],
            piece in 1usize..100,
        ) {
            prop_assert_eq!(streamed(json.as_bytes(), 64, piece), array_of_objects(json.as_bytes()));
        }

        /// On any text, what it splits is what a parser would split, or the text is not valid.
        #[test]
        fn any_text_splits_as_a_parser_would_or_is_refused(json in strings().prop_map(|s| format!("[{s}]"))) {
            if let (Some(split), Some(want)) = (array_of_objects(json.as_bytes()), parsed(&json)) {
                prop_assert_eq!(split, want);
            }
        }
    }
}
