//! Names and label values: everything prenv puts in a name, host or label is checked or made valid here.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A DNS-1123 label (namespace names, hostname labels) is at most 63 characters (RFC 1123).
pub const DNS_LABEL_MAX: usize = 63;
/// A full DNS name is at most 253 characters (RFC 1035, without the trailing dot).
pub const DNS_NAME_MAX: usize = 253;
/// Kubernetes label values share the 63-character limit of DNS labels.
pub const LABEL_VALUE_MAX: usize = 63;
/// PR numbers up to 999,999 must always fit: the config guarantees room for this many digits.
pub const PR_DIGITS_RESERVED: usize = 6;
/// The infix between the project id and the PR number in every environment name.
pub const ENV_INFIX: &str = "-pr-";
/// The longest project id that still leaves room for `-pr-` and a 6-digit PR number.
pub const PROJECT_ID_MAX: usize = DNS_LABEL_MAX - ENV_INFIX.len() - PR_DIGITS_RESERVED;
/// An OCI image tag is at most 128 characters (OCI distribution spec).
pub const IMAGE_TAG_MAX: usize = 128;
/// Hex digits of the hash suffix added to a sanitized value so distinct inputs stay distinct.
const HASH_SUFFIX_LEN: usize = 6;

/// The name of one preview environment: `{project_id}-pr-{number}`, also its namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EnvName(String);

impl EnvName {
    /// Builds the name for a PR, refusing any that would not be a valid DNS label.
    pub fn new(project_id: &str, number: u64) -> Result<EnvName> {
        let name = format!("{project_id}{ENV_INFIX}{number}");
        EnvName::try_from(name)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `env` split at its last [`ENV_INFIX`]: what comes before (the project, when it is an
/// environment's name) and after (its number). A search of the bytes: `str::rsplit_once` with a
/// string pattern builds a searcher per call, and every sync asks this of every environment.
pub fn split_env(env: &str) -> Option<(&str, &str)> {
    let at = env
        .as_bytes()
        .windows(ENV_INFIX.len())
        .rposition(|w| w == ENV_INFIX.as_bytes())?;
    // The infix is ASCII, so both ends of it are character boundaries.
    Some((&env[..at], &env[at + ENV_INFIX.len()..]))
}

/// The PR number of environment `env` when it is project `project_id`'s (`{project_id}-pr-{number}`,
/// the number written as Rust writes it). Two projects never share a name: a project id is a DNS
/// label, so the part after the last `-pr-` that parses decides, and only one prefix matches.
pub fn pr_of(project_id: &str, env: &str) -> Option<u64> {
    let number = env.strip_prefix(project_id)?.strip_prefix(ENV_INFIX)?.as_bytes();
    // As Rust writes it: digits only, no leading zero (but `0` itself), no sign. Checked and read
    // in one pass over the bytes, not by writing the number back: every sync asks this of every
    // environment, some twice.
    if number.is_empty() || (number[0] == b'0' && number.len() > 1) {
        return None;
    }
    number.iter().try_fold(0u64, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d < 10)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

impl TryFrom<String> for EnvName {
    type Error = Error;
    fn try_from(name: String) -> Result<EnvName> {
        match dns_label_problem(&name) {
            None => Ok(EnvName(name)),
            Some(problem) => Err(Error::Name { name, message: problem }),
        }
    }
}

/// Lets maps keyed by names be searched with a `&str` (the order is the string's: the derived one).
impl std::borrow::Borrow<str> for EnvName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<EnvName> for String {
    fn from(n: EnvName) -> String {
        n.0
    }
}

impl std::fmt::Display for EnvName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why `s` is not a DNS-1123 label (lowercase alphanumerics and `-`, alphanumeric at both ends,
/// 1–63 characters), or `None` when it is one.
pub fn dns_label_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("is empty; a DNS label needs 1 to 63 characters".into());
    }
    if s.len() > DNS_LABEL_MAX {
        return Some(format!(
            "is {} characters; a DNS label has at most {DNS_LABEL_MAX}",
            s.len()
        ));
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    // The bytes first (the common case, asked of every environment a read lists); the characters
    // only to name the one that is not allowed.
    if !s.bytes().all(|b| allowed(char::from(b)))
        && let Some(c) = s.chars().find(|c| !allowed(*c))
    {
        return Some(format!(
            "contains {c:?}; only lowercase letters, digits and '-' are allowed"
        ));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Some("must start and end with a letter or digit".into());
    }
    None
}

/// Why `s` is not a DNS name made of DNS-1123 labels, or `None` when it is one.
pub fn dns_name_problem(s: &str) -> Option<String> {
    if s.len() > DNS_NAME_MAX {
        return Some(format!(
            "is {} characters; a DNS name has at most {DNS_NAME_MAX}",
            s.len()
        ));
    }
    s.split('.')
        .find_map(|label| dns_label_problem(label).map(|p| format!("label {label:?} {p}")))
}

/// True when `s` is a valid Kubernetes label value: empty, or up to 63 characters of
/// alphanumerics, `-`, `_` and `.` that start and end with an alphanumeric.
pub fn is_label_value(s: &str) -> bool {
    if s.is_empty() {
        return true;
    }
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    s.len() <= LABEL_VALUE_MAX
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && ends_ok(s.chars().next())
        && ends_ok(s.chars().last())
}

/// Makes any string a valid label value. Valid values come back unchanged; anything else is reduced
/// to its allowed characters, cut from the right (the start of a branch name says the most), and
/// given a short hash of the original so that two different inputs never share a value.
pub fn sanitize_label_value(input: &str) -> String {
    if is_label_value(input) {
        return input.to_string();
    }
    let hash = short_hash(input);
    let readable = squeeze(input, |c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let room = LABEL_VALUE_MAX - HASH_SUFFIX_LEN - 1;
    let readable = trim_to(&readable, room);
    if readable.is_empty() {
        hash
    } else {
        format!("{readable}-{hash}")
    }
}

/// Makes any string usable inside an OCI image tag (`[A-Za-z0-9_.-]`, not starting with `.` or `-`).
pub fn sanitize_tag_part(input: &str) -> String {
    let s = squeeze(input, |c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    s.trim_start_matches(['.', '-']).to_string()
}

/// True when `s` is a valid OCI image tag.
pub fn is_image_tag(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= IMAGE_TAG_MAX
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Characters that some YAML reader or writer folds, drops or rewrites even inside quotes: C0 and C1
/// controls (NEL is a line break in YAML 1.1), DEL, the Unicode line and paragraph separators, the
/// byte-order mark and the non-characters.
pub fn is_yaml_hazard(c: char) -> bool {
    let n = c as u32;
    n < 0x20 || (0x7F..=0x9F).contains(&n) || matches!(n, 0x2028 | 0x2029 | 0xFEFF | 0xFFFE | 0xFFFF)
}

/// Makes a free-form value (a branch name) safe to carry in an annotation through every YAML tool:
/// `%` and the hazardous characters are percent-encoded as UTF-8 bytes; everything else, Unicode
/// included, stays as it is. Most values come back unchanged. [`decode_annotation`] reverses it.
pub fn encode_annotation(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c == '%' || is_yaml_hazard(c) {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Reverses [`encode_annotation`]; `None` when the value is not a valid encoding.
pub fn decode_annotation(value: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(value.len());
    let mut rest = value.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// Replaces every disallowed character with `-` and collapses runs of `-`.
fn squeeze(input: &str, allowed: impl Fn(char) -> bool) -> String {
    let mut out = String::with_capacity(input.len());
    for c in input.chars() {
        let c = if allowed(c) { c } else { '-' };
        if !(c == '-' && out.ends_with('-')) {
            out.push(c);
        }
    }
    out
}

/// Cuts `s` (ASCII) to at most `max` characters with alphanumerics at both ends.
fn trim_to(s: &str, max: usize) -> &str {
    let s = &s[..s.len().min(max)];
    s.trim_matches(|c: char| !c.is_ascii_alphanumeric())
}

fn short_hash(input: &str) -> String {
    let digest = Sha256::digest(input.as_bytes());
    hex::encode(digest)[..HASH_SUFFIX_LEN].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_environment_name_splits_at_its_last_infix_as_rsplit_once_does() {
        for env in [
            "shop-pr-7",
            "a-pr-b-pr-9",
            "-pr-",
            "shop",
            "",
            "é-pr-1",
            "shop-pr-",
            "-pr-pr-",
        ] {
            assert_eq!(split_env(env), env.rsplit_once(ENV_INFIX), "{env}");
        }
    }

    #[test]
    fn a_pr_number_counts_only_as_rust_writes_it() {
        let cases: &[(&str, Option<u64>)] = &[
            ("shop-pr-7", Some(7)),
            ("shop-pr-0", Some(0)),
            ("shop-pr-18446744073709551615", Some(u64::MAX)),
            ("shop-pr-18446744073709551616", None),
            ("shop-pr-07", None),
            ("shop-pr-+7", None),
            ("shop-pr--7", None),
            ("shop-pr-", None),
            ("shop-pr-7a", None),
            ("shop-pr-٣", None),
            ("shopx-pr-7", None),
            ("shop-7", None),
        ];
        for (env, want) in cases {
            assert_eq!(pr_of("shop", env), *want, "{env}");
        }
    }

    proptest! {
        #[test]
        fn a_pr_number_reads_back_what_was_written(n: u64, tail in "[0-9a-z+-]{0,4}") {
            prop_assert_eq!(pr_of("shop", &format!("shop-pr-{n}")), Some(n));
            let odd = format!("shop-pr-{tail}");
            let by_writing_back = tail.parse::<u64>().ok().filter(|p| p.to_string() == tail);
            prop_assert_eq!(pr_of("shop", &odd), by_writing_back);
        }
    }

    #[test]
    fn env_names_follow_the_project_and_pr_number() {
        let cases: &[(&str, u64, Option<&str>)] = &[
            ("shop", 1, Some("shop-pr-1")),
            ("shop", 999_999, Some("shop-pr-999999")),
            ("a", 42, Some("a-pr-42")),
            (&"x".repeat(PROJECT_ID_MAX), 999_999, Some("")),
            (&"x".repeat(PROJECT_ID_MAX), 1_000_000, None),
            ("Shop", 1, None),
            ("-shop", 1, None),
            ("shop_app", 1, None),
        ];
        for (project, number, want) in cases {
            let got = EnvName::new(project, *number);
            match want {
                Some("") => assert!(got.is_ok(), "{project} {number}: {got:?}"),
                Some(w) => assert_eq!(got.unwrap().as_str(), *w),
                None => assert!(got.is_err(), "{project} {number} should be refused"),
            }
        }
    }

    #[test]
    fn label_values_are_checked_like_kubernetes_does() {
        let cases = [
            ("", true),
            ("main", true),
            ("feature.x_y-1", true),
            ("on", true),
            ("-lead", false),
            ("trail.", false),
            ("a/b", false),
            ("ünïcode", false),
            (&"a".repeat(63) as &str, true),
            (&"a".repeat(64) as &str, false),
        ];
        for (value, valid) in cases {
            assert_eq!(is_label_value(value), valid, "{value:?}");
        }
    }

    #[test]
    fn sanitizing_keeps_the_start_and_adds_a_hash() {
        let cases = [
            ("main", "main"),
            ("feature/login", "feature-login-"),
            ("../../etc/passwd", "etc-passwd-"),
            ("💥", ""),
            ("--", ""),
        ];
        for (input, prefix) in cases {
            let got = sanitize_label_value(input);
            assert!(got.starts_with(prefix), "{input:?} -> {got:?}");
            assert!(is_label_value(&got), "{input:?} -> {got:?}");
        }
        let long = format!("{}/end", "segment".repeat(20));
        let got = sanitize_label_value(&long);
        assert!(got.starts_with("segmentsegment") && got.len() <= LABEL_VALUE_MAX);
    }

    #[test]
    fn annotations_encode_only_what_yaml_tools_would_mangle() {
        let cases = [
            ("feature/ünïcode-🚀", "feature/ünïcode-🚀"),
            ("100%", "100%25"),
            ("line\u{2028}sep\u{85}nel", "line%E2%80%A8sep%C2%85nel"),
        ];
        for (input, want) in cases {
            assert_eq!(encode_annotation(input), want);
            assert_eq!(decode_annotation(want).as_deref(), Some(input));
        }
        assert_eq!(decode_annotation("%zz"), None);
    }

    #[test]
    fn dns_names_are_checked_label_by_label() {
        assert_eq!(dns_name_problem("preview.example.com"), None);
        assert!(dns_name_problem("preview..example.com").is_some());
        assert!(dns_name_problem("Preview.example.com").is_some());
        assert!(dns_name_problem(&format!("{}.com", "a".repeat(64))).is_some());
    }

    proptest! {
        #[test]
        fn any_string_sanitizes_to_a_valid_label_value(input in "\\PC*") {
            let out = sanitize_label_value(&input);
            prop_assert!(is_label_value(&out), "{:?} -> {:?}", input, out);
        }

        #[test]
        fn sanitizing_is_idempotent(input in "\\PC*") {
            let once = sanitize_label_value(&input);
            prop_assert_eq!(sanitize_label_value(&once), once.clone());
        }

        #[test]
        fn different_inputs_get_different_values(a in "[a-z/ .ü]{0,80}", b in "[a-z/ .ü]{0,80}") {
            prop_assume!(a != b);
            prop_assert_ne!(sanitize_label_value(&a), sanitize_label_value(&b));
        }

        #[test]
        fn valid_label_values_are_left_alone(input in "[a-zA-Z0-9]([a-zA-Z0-9._-]{0,61}[a-zA-Z0-9])?") {
            prop_assert_eq!(sanitize_label_value(&input), input);
        }

        #[test]
        fn annotation_encoding_round_trips_and_leaves_no_hazard(input in "\\PC*|[\\u{0}-\\u{9f}\\u{2028}\\u{2029}%a-z]*") {
            let encoded = encode_annotation(&input);
            prop_assert!(!encoded.chars().any(is_yaml_hazard));
            prop_assert_eq!(decode_annotation(&encoded), Some(input));
        }

        #[test]
        fn tag_parts_only_hold_tag_characters(input in "\\PC*") {
            let part = sanitize_tag_part(&input);
            prop_assert!(part.is_empty() || is_image_tag(&part[..part.len().min(IMAGE_TAG_MAX)]));
        }
    }
}
