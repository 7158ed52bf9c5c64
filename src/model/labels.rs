//! Label and annotation keys prenv writes on every object of an environment; the watcher finds
//! environments and their PRs by them.

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const PROJECT: &str = "prenv.dev/project";
pub const ENV: &str = "prenv.dev/env";
pub const PR: &str = "prenv.dev/pr";
pub const BRANCH: &str = "prenv.dev/branch";
pub const HEAD_SHA: &str = "prenv.dev/head-sha";
pub const HEAD_REF: &str = "prenv.dev/head-ref";
pub const URL: &str = "prenv.dev/url";
pub const DATABASES: &str = "prenv.dev/databases";
/// When prenv committed the environment's head (RFC 3339), on the Flux Kustomization or Argo CD
/// Application: the watcher's clock for each push.
pub const COMMITTED_AT: &str = "prenv.dev/committed-at";
/// When the PR became deployable (RFC 3339), on the same objects: the start of open→ready.
pub const ELIGIBLE_AT: &str = "prenv.dev/eligible-at";
/// While an environment waits for the image of a newer head (`waiting_for` in prenv.json): that
/// head's commit, its image and since when, on the Flux Kustomization or Argo CD Application, so the
/// watcher reports "waiting for image …" as pending on that commit. Absent (or empty) otherwise.
pub const WAITING_FOR_SHA: &str = "prenv.dev/waiting-for-sha";
pub const WAITING_FOR_IMAGE: &str = "prenv.dev/waiting-for-image";
pub const WAITING_SINCE: &str = "prenv.dev/waiting-since";
/// While an environment waits for room in the cluster (`queued` in prenv.json): its place, how
/// many wait, and since when, on the Flux Kustomization or Argo CD Application, so the watcher
/// reports "queued, position N of M" as pending. Absent (or empty) otherwise.
pub const QUEUED_POSITION: &str = "prenv.dev/queued-position";
pub const QUEUED_OF: &str = "prenv.dev/queued-of";
pub const QUEUED_AT: &str = "prenv.dev/queued-at";
/// The label a queued environment's Argo CD Application carries (`"true"`), instead of automated sync.
pub const QUEUED: &str = "prenv.dev/queued";
