//! How results are shown on the command line: the plan as text, a unified diff of what a sync
//! would write, and the lines of `render --check`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::core::desired::Desired;
use crate::core::diff::Changes;
use crate::core::plan::{Action, Plan};
use crate::core::ports::{EnvStore, RepoView};
use crate::error::Result;

/// One line per decision (skips only with `show_skipped`), one per file found in prenv's
/// directories that is not prenv's (kept), one per wiring file kept instead of rewritten (and
/// why), how full the cluster is (with a `[capacity]` limit), then the summary.
pub fn plan_text(
    plan: &Plan,
    changes: &Changes,
    strays: &BTreeSet<String>,
    held: &BTreeMap<String, String>,
    show_skipped: bool,
) -> String {
    let shown = plan
        .decisions
        .iter()
        .filter(|d| show_skipped || d.action != Action::Skip);
    let mut text = String::with_capacity(plan.decisions.len() * 120);
    // Written by hand rather than with `writeln!` and padding: at 10,000 environments the plan's
    // text was a tenth of a sync of one PR. The columns are `{:<7} {:<24} #{:<7} {}`.
    const SPACES: &str = "                        "; // the widest column
    let pad = |text: &mut String, s: &str, width: usize| {
        text.push_str(s);
        let used = if s.is_ascii() { s.len() } else { s.chars().count() };
        text.push_str(&SPACES[..width.saturating_sub(used).min(SPACES.len())]);
    };
    let mut number = itoa::Buffer::new();
    for d in shown {
        pad(&mut text, d.action.as_str(), 7);
        text.push(' ');
        pad(&mut text, &d.env, 24);
        text.push_str(" #");
        pad(&mut text, number.format(d.pr), 7);
        text.push(' ');
        text.push_str(&d.reason);
        text.push('\n');
    }
    for path in strays {
        text.push_str(&format!("kept    {path}: not a file prenv writes, left as it is\n"));
    }
    for (path, why) in held {
        text.push_str(&format!("kept    {path}: {why}\n"));
    }
    let mut counts = BTreeMap::new();
    for d in &plan.decisions {
        *counts.entry(d.action).or_insert(0usize) += 1;
    }
    if plan.settled > 0 {
        text.push_str(&format!(
            "keep    {} other environments: not in the snapshot, and the tree read is settled, so they are kept as they are\n",
            plan.settled
        ));
        *counts.entry(Action::Keep).or_insert(0) += plan.settled;
    }
    let summary: Vec<String> = counts.iter().map(|(a, n)| format!("{n} {a}")).collect();
    for line in plan.capacity.iter().flat_map(|c| c.lines()) {
        text.push_str(&line);
        text.push('\n');
    }
    text.push_str(&format!(
        "plan: {}; {} files to add, {} to change, {} to remove\n",
        if summary.is_empty() {
            "no pull requests".to_string()
        } else {
            summary.join(", ")
        },
        changes.added.len(),
        changes.modified.len(),
        changes.removed.len()
    ));
    text
}

/// A unified diff of every file the desired state adds, changes or removes.
pub fn unified_diff(store: &dyn EnvStore, view: &RepoView, desired: &Desired) -> Result<String> {
    let c = &desired.changes;
    let mut text = String::new();
    for path in c.added.iter().chain(&c.modified).chain(&c.removed) {
        let old = store.read_file(view, path)?.unwrap_or_default();
        let new = desired.upserts.get(path).unwrap_or_default();
        let (old, new) = (String::from_utf8_lossy(&old), String::from_utf8_lossy(new));
        let diff = similar::TextDiff::from_lines(old.as_ref(), new.as_ref());
        let a = if c.added.contains(path) {
            "/dev/null".to_string()
        } else {
            format!("a/{path}")
        };
        let b = if c.removed.contains(path) {
            "/dev/null".to_string()
        } else {
            format!("b/{path}")
        };
        text.push_str(&diff.unified_diff().header(&a, &b).to_string());
    }
    Ok(text)
}

/// The lines `render --check` prints for a directory that is out of date (none when it is not).
pub fn check_lines(dir: &Path, changes: &Changes) -> Vec<String> {
    let lines = [
        ("missing", &changes.added),
        ("differs", &changes.modified),
        ("stale", &changes.removed),
    ];
    let mut out: Vec<String> = lines
        .iter()
        .flat_map(|(what, paths)| paths.iter().map(move |p| format!("{what}: {}", dir.join(p).display())))
        .collect();
    if !out.is_empty() {
        out.push(format!(
            "{} is out of date; run `prenv render` without --check to update it",
            dir.display()
        ));
    }
    out
}
