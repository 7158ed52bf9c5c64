//! Pull requests as prenv sees them, read from a snapshot in GitHub's REST shape
//! (`GET /repos/{owner}/{repo}/pulls?state=all`). Unknown fields are ignored; missing ones are named.

use std::borrow::Cow;
use std::ops::Range;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::error::{Error, Result};

/// A neutral pull request: what the lifecycle decisions need and nothing of any SDK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    pub number: u64,
    pub state: PrState,
    pub draft: bool,
    pub title: String,
    pub labels: Vec<String>,
    pub head_sha: String,
    pub head_ref: String,
    /// `owner/name` of the head repository; `None` when the fork was deleted.
    pub head_repo: Option<String>,
    /// `owner/name` of the base repository, when the source says.
    pub base_repo: Option<String>,
    pub author: Option<String>,
    pub closed_at: Option<DateTime<Utc>>,
    pub merged_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// When the PR was opened (REST `created_at`); `None` from a snapshot without it.
    pub created_at: Option<DateTime<Utc>>,
    /// The webhook event this copy of the PR came with; `None` from a listing.
    pub trigger: Option<Trigger>,
}

/// A `pull_request` webhook event: what happened to the PR and when. GitHub sets the payload's
/// `pull_request.updated_at` to the moment of the event (ready_for_review, labeled, reopened …),
/// so it is the event's time; a listing has no such record of how a PR came to its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    pub action: String,
    /// `label.name` of a labeled or unlabeled event.
    pub label: Option<String>,
    pub at: DateTime<Utc>,
}

/// What a PR source established: the PRs it read, and the PRs with an environment whose state it
/// could not confirm (with the reason), whose environments must be kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub prs: Vec<PullRequest>,
    pub unconfirmed: std::collections::BTreeMap<u64, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrState {
    Open,
    Closed,
}

impl PullRequest {
    pub fn has_label(&self, name: &str) -> bool {
        self.labels.iter().any(|l| l == name)
    }

    /// A fork PR: its head lives in another repository (or a deleted one).
    pub fn is_fork(&self, repository: Option<&str>) -> bool {
        let base = repository.or(self.base_repo.as_deref());
        match (&self.head_repo, base) {
            (None, _) => true,
            (Some(head), Some(base)) => !head.eq_ignore_ascii_case(base),
            (Some(_), None) => false,
        }
    }
}

#[derive(Deserialize)]
struct RestPull {
    number: u64,
    state: PrState,
    #[serde(default)]
    draft: bool,
    #[serde(default)]
    title: String,
    #[serde(default)]
    labels: Vec<RestLabel>,
    head: RestHead,
    #[serde(default)]
    base: Option<RestBase>,
    #[serde(default)]
    user: Option<RestUser>,
    #[serde(default, deserialize_with = "super::timestamp::maybe_instant")]
    closed_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "super::timestamp::maybe_instant")]
    merged_at: Option<DateTime<Utc>>,
    #[serde(deserialize_with = "super::timestamp::instant")]
    updated_at: DateTime<Utc>,
    #[serde(default, deserialize_with = "super::timestamp::maybe_instant")]
    created_at: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
struct RestLabel {
    name: String,
}

#[derive(Deserialize)]
struct RestHead {
    sha: String,
    #[serde(rename = "ref")]
    git_ref: String,
    repo: Option<RestRepo>,
}

#[derive(Deserialize)]
struct RestBase {
    repo: Option<RestRepo>,
}

#[derive(Deserialize)]
struct RestRepo {
    full_name: String,
}

#[derive(Deserialize)]
struct RestUser {
    login: String,
}

/// Parses a JSON array of GitHub REST pull-request objects; `origin` names the source in errors.
/// A PR listed twice (pages shift while a listing runs) keeps its most recently updated copy.
pub fn parse_snapshot(json: &str, origin: &str) -> Result<Vec<PullRequest>> {
    let err = |message: String| Error::Snapshot {
        origin: origin.to_string(),
        message,
    };
    // Straight into the fields prenv reads (serde skips the rest of GitHub's large objects); only
    // a listing with something wrong in it is read again element by element, below, to name the
    // one at fault. Going through `serde_json::Value` every time was a third of a sync of 10,000 PRs.
    // Each element is made a PR as it is read: no list of the REST shapes in between.
    if let Ok(prs) = serde_json::from_str::<Vec<Parsed>>(json) {
        return Ok(in_order(prs.into_iter().map(|p| p.0).collect()));
    }
    let items: Vec<serde_json::Value> = serde_json::from_str(json).map_err(|e| {
        err(format!(
            "{e}; expected a JSON array of pull requests as GitHub's REST API returns them"
        ))
    })?;
    let mut prs: Vec<PullRequest> = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let number = item.get("number").and_then(|n| n.as_u64());
        let which = match number {
            Some(n) => format!("element {index} (PR #{n})"),
            None => format!("element {index}"),
        };
        let rest: RestPull = serde_json::from_value(item).map_err(|e| err(format!("{which}: {e}")))?;
        let pr = from_rest(rest).map_err(|m| err(format!("{which}: {m}")))?;
        prs.push(pr);
    }
    Ok(in_order(prs))
}

/// The digest of one element of a listing: the first 16 bytes of the SHA-256 of its bytes.
pub type ElementId = [u8; 16];

/// By PR, the element each was built from.
pub type Elements = std::collections::BTreeMap<u64, ElementId>;

/// A snapshot's JSON split into its elements, each element's bytes digested, before any PR is
/// built: a run against a settled tree builds only the elements whose digests its fingerprints do
/// not know ([`Listing::read`]), the rest being byte for byte PRs it decided already. Splitting
/// and digesting need nothing from the repository, so they can run while it is opened.
pub struct Listing {
    text: Box<dyn Text>,
    origin: String,
    /// Each element's place in the text, and its digest.
    elements: Vec<(Range<usize>, ElementId)>,
}

/// Where the elements a [`Listing`] builds are read from, after it was split: the text itself, or
/// a file read again by range ([`crate::adapters::fs::SnapshotFile`]).
pub trait Text: Send {
    /// The whole text.
    fn whole(&self) -> std::io::Result<Cow<'_, [u8]>>;
    /// The bytes at `range` of the text; fewer when the text has become shorter.
    fn at(&self, range: Range<usize>) -> std::io::Result<Cow<'_, [u8]>>;
    /// Whether the bytes read may differ from the ones split (a file someone writes to): then
    /// each element built is checked against its digest.
    fn may_change(&self) -> bool;
}

impl Text for String {
    fn whole(&self) -> std::io::Result<Cow<'_, [u8]>> {
        Ok(Cow::Borrowed(self.as_bytes()))
    }

    fn at(&self, range: Range<usize>) -> std::io::Result<Cow<'_, [u8]>> {
        Ok(Cow::Borrowed(&self.as_bytes()[range]))
    }

    fn may_change(&self) -> bool {
        false
    }
}

/// At most this many elements to build are read one by one from a [`Text`]; more, and it is read
/// whole once.
const READ_ONE_BY_ONE: usize = 64;

/// What [`Listing::read`] built.
#[derive(Debug, Clone, Default)]
pub struct Read {
    /// By number, each PR once (as [`parse_snapshot`] gives them): every PR of the listing but the
    /// ones left unread.
    pub prs: Vec<PullRequest>,
    /// The digest of the element each PR of `prs` was built from, for the PRs listed once.
    pub elements: Elements,
    /// How many elements were known, and left unread.
    pub unread: usize,
}

impl Listing {
    /// Splits `json` (read from `origin`) into its elements and digests each. Not a JSON array:
    /// the error [`parse_snapshot`] names, at once; an element that is not a PR is named when it
    /// is built.
    pub fn new(json: String, origin: &str) -> Result<Listing> {
        let ranges = match super::split::array_of_objects(json.as_bytes()) {
            Some(ranges) => ranges,
            // Not an array of objects between its elements: a parser says what it is.
            None => match serde_json::from_str::<Vec<&serde_json::value::RawValue>>(&json) {
                Ok(raw) => raw
                    .iter()
                    .map(|element| {
                        let start = element.get().as_ptr() as usize - json.as_ptr() as usize;
                        start..start + element.get().len()
                    })
                    .collect(),
                Err(e) => return Err(fault_in(json.as_bytes(), origin, &e)),
            },
        };
        let elements = ranges
            .into_iter()
            .map(|range| {
                let id = element_id(&json.as_bytes()[range.clone()]);
                (range, id)
            })
            .collect();
        Ok(Listing {
            text: Box::new(json),
            origin: origin.to_string(),
            elements,
        })
    }

    /// A listing split as it is read from `reader`, 64 kB at a time, without holding the text:
    /// `text` reads the elements to build again (and the whole, when the text is not an array of
    /// objects between its elements, for [`Listing::new`] to name what it is).
    pub fn streamed(mut reader: impl std::io::Read, text: Box<dyn Text>, origin: &str) -> Result<Listing> {
        let io = |e| unreadable(origin, e);
        let mut stream = super::split::Stream::new(64 << 10);
        let mut elements = Vec::new();
        let mut each = |range: Range<usize>, bytes: &[u8]| elements.push((range, element_id(bytes)));
        let split = loop {
            let n = match reader.read(stream.space()) {
                Ok(0) => break stream.closed(),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io(e)),
            };
            if stream.filled(n, &mut each).is_none() {
                break false;
            }
        };
        if !split {
            let whole = text.whole().map_err(io)?.into_owned();
            let json =
                String::from_utf8(whole).map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
            return Listing::new(json, origin);
        }
        Ok(Listing {
            text,
            origin: origin.to_string(),
            elements,
        })
    }

    /// The PRs of the listing but those whose element `known` holds (by digest, with the PR it is).
    /// A PR listed twice, once known and once not, is built from both copies, as [`parse_snapshot`]
    /// keeps the newest: then every element is.
    pub fn read(&self, known: &rustc_hash::FxHashMap<ElementId, u64>) -> Result<Read> {
        let mut unread = Vec::with_capacity(self.elements.len());
        let mut to_build = Vec::with_capacity(self.elements.len().min(64));
        for (range, id) in &self.elements {
            match known.get(id) {
                Some(pr) => unread.push(*pr),
                None => to_build.push((range, id)),
            }
        }
        let io = |e| unreadable(&self.origin, e);
        let whole = match to_build.len() > READ_ONE_BY_ONE {
            true => Some(self.text.whole().map_err(io)?),
            false => None,
        };
        let mut built = Vec::with_capacity(to_build.len());
        for (range, id) in to_build {
            let bytes = match &whole {
                Some(whole) => Cow::Borrowed(whole.get(range.clone()).unwrap_or_default()),
                None => self.text.at(range.clone()).map_err(io)?,
            };
            if self.text.may_change() && element_id(&bytes) != *id {
                return Err(Error::Snapshot {
                    origin: self.origin.clone(),
                    message: "it changed while prenv read it; run again once it is written whole".into(),
                });
            }
            match serde_json::from_slice::<Parsed>(&bytes) {
                Ok(Parsed(pr)) => built.push((pr, *id)),
                Err(e) => return Err(self.fault(&e)),
            }
        }
        // Built are a few: each unread PR is looked up among them, not the other way round.
        let mut numbers: Vec<u64> = built.iter().map(|(pr, _)| pr.number).collect();
        numbers.sort_unstable();
        if !numbers.is_empty() && unread.iter().any(|pr| numbers.binary_search(pr).is_ok()) {
            return self.read(&Default::default());
        }
        let skipped = unread.len();
        let mut listed = rustc_hash::FxHashMap::<u64, usize>::default();
        for (pr, _) in &built {
            *listed.entry(pr.number).or_default() += 1;
        }
        let elements = built
            .iter()
            .filter(|(pr, _)| listed[&pr.number] == 1)
            .map(|(pr, id)| (pr.number, *id))
            .collect();
        Ok(Read {
            prs: in_order(built.into_iter().map(|(pr, _)| pr).collect()),
            elements,
            unread: skipped,
        })
    }

    /// How many elements the listing has.
    pub fn len(&self) -> usize {
        self.elements.len()
    }

    /// Whether the listing is an empty array.
    pub fn is_empty(&self) -> bool {
        self.elements.is_empty()
    }

    /// Every PR of the listing.
    pub fn every(&self) -> Result<Read> {
        self.read(&Default::default())
    }

    /// What is wrong with the listing, as [`parse_snapshot`] names it (the element and the
    /// field), read whole again; `e` is what the quicker read found.
    fn fault(&self, e: &serde_json::Error) -> Error {
        match self.text.whole() {
            Ok(whole) => fault_in(&whole, &self.origin, e),
            Err(read) => unreadable(&self.origin, read),
        }
    }
}

/// The snapshot at `origin` could not be read.
pub(crate) fn unreadable(origin: impl Into<std::path::PathBuf>, e: std::io::Error) -> Error {
    Error::io("reading pull-request snapshot", origin, e)
}

/// What is wrong with snapshot `json`, as [`parse_snapshot`] names it (the element and the
/// field); `e` is what the quicker read found, in case the whole reads without fault.
fn fault_in(json: &[u8], origin: &str, e: &serde_json::Error) -> Error {
    let found = match std::str::from_utf8(json) {
        Ok(json) => parse_snapshot(json, origin).err(),
        Err(utf8) => Some(Error::Snapshot {
            origin: origin.to_string(),
            message: format!("it is not UTF-8 text ({utf8})"),
        }),
    };
    found.unwrap_or_else(|| Error::Snapshot {
        origin: origin.to_string(),
        message: e.to_string(),
    })
}

fn element_id(bytes: &[u8]) -> ElementId {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    let mut id = [0; 16];
    id.copy_from_slice(&digest[..16]);
    id
}

/// By number, each PR once: its most recently updated copy.
fn in_order(mut prs: Vec<PullRequest>) -> Vec<PullRequest> {
    prs.sort_by(|a, b| a.number.cmp(&b.number).then(b.updated_at.cmp(&a.updated_at)));
    prs.dedup_by_key(|p| p.number);
    prs
}

/// A PR read straight from its REST shape; an element it does not make is named by the slower path.
struct Parsed(PullRequest);

impl<'de> Deserialize<'de> for Parsed {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Parsed, D::Error> {
        let rest = RestPull::deserialize(d)?;
        from_rest(rest).map(Parsed).map_err(serde::de::Error::custom)
    }
}

fn from_rest(r: RestPull) -> std::result::Result<PullRequest, String> {
    if r.number == 0 {
        return Err("`number` is 0; GitHub numbers PRs from 1".into());
    }
    let sha_ok = matches!(r.head.sha.len(), 40 | 64) && r.head.sha.bytes().all(|b| b.is_ascii_hexdigit());
    if !sha_ok {
        return Err(format!(
            "`head.sha` = {:?} is not a full commit SHA (40 or 64 hex digits)",
            r.head.sha
        ));
    }
    if r.state == PrState::Closed && r.closed_at.is_none() {
        return Err("`state` is \"closed\" but `closed_at` is missing; a closed PR needs its close time".into());
    }
    Ok(PullRequest {
        number: r.number,
        state: r.state,
        draft: r.draft,
        title: r.title,
        labels: r.labels.into_iter().map(|l| l.name).collect(),
        head_sha: {
            let mut sha = r.head.sha;
            sha.make_ascii_lowercase();
            sha
        },
        head_ref: r.head.git_ref,
        head_repo: r.head.repo.map(|r| r.full_name),
        base_repo: r.base.and_then(|b| b.repo).map(|r| r.full_name),
        author: r.user.map(|u| u.login),
        closed_at: r.closed_at,
        merged_at: r.merged_at,
        updated_at: r.updated_at,
        created_at: r.created_at,
        trigger: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pr_json(number: u64) -> serde_json::Value {
        json!({
            "number": number, "state": "open", "draft": false, "title": "Add cart",
            "labels": [{"name": "preserve=true", "color": "ffffff"}],
            "head": {"sha": "a".repeat(40), "ref": "feature/cart", "repo": {"full_name": "acme/shop"}},
            "base": {"ref": "main", "repo": {"full_name": "acme/shop"}},
            "user": {"login": "dev"}, "closed_at": null, "merged_at": null,
            "updated_at": "2026-11-20T10:00:00Z", "unknown_field": {"ignored": true}
        })
    }

    #[test]
    fn github_rest_objects_are_read_and_unknown_fields_ignored() {
        let prs = parse_snapshot(&json!([pr_json(7)]).to_string(), "prs.json").unwrap();
        assert_eq!(prs.len(), 1);
        let pr = &prs[0];
        assert_eq!((pr.number, pr.head_ref.as_str()), (7, "feature/cart"));
        assert!(pr.has_label("preserve=true"));
        assert_eq!(pr.created_at, None, "a snapshot without `created_at` still parses");
        assert!(!pr.is_fork(None));
        assert!(pr.is_fork(Some("other/repo")));
    }

    #[test]
    fn the_opening_time_is_read_from_created_at() {
        let mut item = pr_json(8);
        item["created_at"] = json!("2026-11-19T08:00:00Z");
        let prs = parse_snapshot(&json!([item]).to_string(), "prs.json").unwrap();
        assert_eq!(prs[0].created_at, Some("2026-11-19T08:00:00Z".parse().unwrap()));
        assert_eq!(prs[0].trigger, None);
    }

    #[test]
    fn broken_snapshots_name_the_element_and_the_field() {
        let mut no_head = pr_json(3);
        no_head.as_object_mut().unwrap().remove("head");
        let mut bad_sha = pr_json(4);
        bad_sha["head"]["sha"] = json!("abc");
        let mut closed = pr_json(5);
        closed["state"] = json!("closed");
        let table = [
            ("not json", "{".to_string(), "expected a JSON array"),
            ("object", "{}".to_string(), "expected a JSON array"),
            (
                "no head",
                json!([no_head]).to_string(),
                "element 0 (PR #3): missing field `head`",
            ),
            ("short sha", json!([bad_sha]).to_string(), "PR #4): `head.sha`"),
            (
                "closed without time",
                json!([closed]).to_string(),
                "`closed_at` is missing",
            ),
        ];
        for (name, text, want) in table {
            let err = parse_snapshot(&text, "prs.json").expect_err(name).to_string();
            assert!(err.contains("prs.json") && err.contains(want), "{name}: {err}");
        }
    }

    /// The digests of `listing`'s elements that `known` names, with their PRs.
    fn knowing(listing: &Listing, known: &[u64]) -> rustc_hash::FxHashMap<ElementId, u64> {
        let elements = &listing.elements;
        let every = listing.every().unwrap();
        elements
            .iter()
            .zip(&every.prs)
            .filter(|(_, pr)| known.contains(&pr.number))
            .map(|((_, id), pr)| (*id, pr.number))
            .collect()
    }

    #[test]
    fn a_listing_builds_only_the_elements_it_does_not_know_and_every_element_as_a_snapshot_does() {
        let json = format!("[{}, {} ,\n{}]", pr_json(1), pr_json(2), pr_json(3));
        let listing = Listing::new(json.clone(), "prs.json").unwrap();
        let every = listing.every().unwrap();
        assert_eq!(every.prs, parse_snapshot(&json, "prs.json").unwrap());
        assert_eq!((every.unread, every.elements.len()), (0, 3));
        let read = listing.read(&knowing(&listing, &[2])).unwrap();
        assert_eq!(read.prs.iter().map(|p| p.number).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(read.unread, 1);
        assert_eq!(read.elements[&3], every.elements[&3]);
        // The same PR in other bytes (another field order) is another element.
        let moved =
            json!({"number": 2, "state": "open", "head": pr_json(2)["head"], "updated_at": "2026-11-20T10:00:00Z"});
        let other = Listing::new(format!("[{}, {moved}]", pr_json(1)), "prs.json").unwrap();
        let read = other.read(&knowing(&listing, &[1, 2])).unwrap();
        assert_eq!((read.prs.len(), read.unread), (1, 1));
        assert_ne!(read.elements[&2], every.elements[&2]);
    }

    #[test]
    fn a_pr_listed_twice_once_known_is_built_from_both_copies() {
        let known = Listing::new(format!("[{}]", pr_json(9)), "x").unwrap();
        let mut newer = pr_json(9);
        newer["head"]["sha"] = json!("b".repeat(40));
        newer["updated_at"] = json!("2026-11-21T10:00:00Z");
        let json = format!("[{}, {newer}]", pr_json(9));
        let read = Listing::new(json.clone(), "x")
            .unwrap()
            .read(&knowing(&known, &[9]))
            .unwrap();
        assert_eq!(read.prs, parse_snapshot(&json, "x").unwrap());
        assert_eq!(read.prs[0].head_sha, "b".repeat(40));
        assert_eq!(read.unread, 0);
        assert!(read.elements.is_empty(), "a PR listed twice has no one element");
    }

    #[test]
    fn a_broken_listing_is_named_as_a_snapshot_is() {
        let mut bad_sha = pr_json(4);
        bad_sha["head"]["sha"] = json!("abc");
        let good = Listing::new(format!("[{}]", pr_json(1)), "prs.json").unwrap();
        for text in ["{".to_string(), "{}".to_string(), "[1,".to_string()] {
            let want = parse_snapshot(&text, "prs.json").unwrap_err().to_string();
            let err = Listing::new(text, "prs.json").err().expect("not an array");
            assert_eq!(err.to_string(), want, "named before anything is read");
        }
        let text = format!("[{}, {bad_sha}]", pr_json(1));
        let want = parse_snapshot(&text, "prs.json").unwrap_err().to_string();
        let listing = Listing::new(text, "prs.json").unwrap();
        assert_eq!(listing.read(&knowing(&good, &[1])).unwrap_err().to_string(), want);
    }

    #[test]
    fn a_pr_listed_twice_keeps_its_newest_copy() {
        let mut older = pr_json(9);
        older["head"]["sha"] = json!("b".repeat(40));
        older["updated_at"] = json!("2026-11-19T10:00:00Z");
        let prs = parse_snapshot(&json!([older, pr_json(9)]).to_string(), "x").unwrap();
        assert_eq!(prs.len(), 1);
        assert_eq!(prs[0].head_sha, "a".repeat(40));
    }
}
