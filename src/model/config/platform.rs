//! `[platform]`: what `prenv init` needs to know about the cluster it scaffolds for — the values a
//! platform engineer would otherwise have to find in YAML and edit by hand.
//!
//! Every key is optional at load, so the commands that never scaffold (`render`, `sync`, `watch`)
//! do not need them; a key that is set is checked at load with the fix named. `prenv init` then
//! refuses a config that lacks a key its engine needs ([`Platform::missing_for_init`]).

use serde::{Deserialize, Serialize};

use crate::model::naming;

/// Let's Encrypt's production directory: what `acme_server` defaults to.
pub const LETSENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// The Secret (in cert-manager's namespace) with the DNS provider's API credentials, by default.
pub const DEFAULT_DNS_SECRET: &str = "dns-api-token";
/// Domains Let's Encrypt refuses in a contact address (letsencrypt/boulder `policy/pa.go`,
/// `forbiddenMailDomains`, the RFC 2606 example domains), and top-level names that are no public
/// suffix (RFC 2606, RFC 6761), which `ValidEmail` refuses through `validNonWildcardDomain`.
const FORBIDDEN_MAIL_DOMAINS: &[&str] = &["example.com", "example.net", "example.org"];
const RESERVED_TLDS: &[&str] = &["test", "example", "invalid", "localhost", "local"];
/// Namespaces of the platform itself: a runner that may create workloads in one of them can mount
/// its Secrets and run as its ServiceAccounts (cluster-wide rights, the GitHub App key), so
/// `runner_namespaces` may not name them.
pub const PLATFORM_NAMESPACES: &[&str] = &[
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "default",
    "flux-system",
    "argocd",
    "cert-manager",
    "cnpg-system",
    "monitoring",
    "arc-systems",
    "arc-runners",
];

/// The DNS providers cert-manager solves DNS-01 challenges with, built in, that prenv scaffolds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsProvider {
    /// An API token with Zone:DNS:Edit on the zone (`apiTokenSecretRef`).
    Cloudflare,
    /// A personal access token with write scope (`tokenSecretRef`).
    Digitalocean,
    /// An IAM access key allowed to change the zone's records (`accessKeyIDSecretRef`,
    /// `secretAccessKeySecretRef`, `region`).
    Route53,
}

impl DnsProvider {
    pub fn name(self) -> &'static str {
        match self {
            DnsProvider::Cloudflare => "cloudflare",
            DnsProvider::Digitalocean => "digitalocean",
            DnsProvider::Route53 => "route53",
        }
    }
}

/// The platform settings of `prenv init`; every value the scaffold needs that has no safe default.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Platform {
    /// Contact address of the Let's Encrypt account (expiry notices). Required by `init`.
    pub acme_email: Option<String>,
    /// ACME directory; unset: Let's Encrypt production. Use the staging directory while trying out.
    pub acme_server: Option<String>,
    /// Who serves the preview domain's DNS zone, for the wildcard certificate's DNS-01 challenge.
    /// Required by `init`.
    pub dns_provider: Option<DnsProvider>,
    /// The Secret in `cert-manager` with the provider's credentials (`scripts/create-secrets dns`
    /// creates it); unset: `dns-api-token`.
    pub dns_secret: Option<String>,
    /// The AWS region of the Route 53 API (`dns_provider = "route53"` only).
    pub dns_region: Option<String>,
    /// The SSH clone URL Flux reads the environments repository from, with the deploy key
    /// `scripts/bootstrap-flux` creates. Unset: `git.url` when it is an SSH URL. Argo CD reads
    /// `argocd.repo_url`; with either engine `prenv serve` pushes here with its own deploy key
    /// (unset with Argo CD: `argocd.repo_url` as SSH).
    pub repo_url: Option<String>,
    /// Where the runner scale set registers: `https://github.com/ORG` or `https://github.com/ORG/REPO`
    /// (GitHub Enterprise Server: its URL). Required by `init`.
    pub runners_github_url: Option<String>,
    /// The runner image with kubectl and helm (build `runner-image/Dockerfile`), with a tag or a
    /// digest. Required by `init`.
    pub runner_image: Option<String>,
    /// The only namespaces where runner jobs may create and change workloads (deploy). Unset: none;
    /// runners then only read the preview environments' state.
    pub runner_namespaces: Vec<String>,
    /// Grafana's host name; unset: `grafana.{domain}` (covered by the wildcard certificate).
    pub grafana_host: Option<String>,
    /// The host name of Flux's webhook receiver; unset: `flux-webhook.{domain}`.
    pub receiver_host: Option<String>,
    /// The host name of `prenv serve`'s GitHub webhook (`https://{host}/webhook`); unset:
    /// `prenv-webhook.{domain}`. One label under the domain, so the wildcard certificate covers it.
    pub webhook_host: Option<String>,
    /// The image `prenv serve` and `prenv watch` run in the cluster, with a tag or a digest; unset:
    /// this release of prenv ([`DEFAULT_PRENV_IMAGE`] with `v` and the version).
    pub prenv_image: Option<String>,
    /// Where Alertmanager sends the platform's alerts (`[platform.alerts]`).
    pub alerts: Alerts,
}

/// Where the release workflow publishes prenv's image (`.github/workflows/release.yml`, tagged
/// `v<version>`): what `platform.prenv_image` defaults to.
pub const DEFAULT_PRENV_IMAGE: &str = "ghcr.io/acme/prenv";

/// The Secret (in `monitoring`) with the alert receivers' credentials, by default.
pub const DEFAULT_ALERTS_SECRET: &str = "alertmanager-receivers";

/// `[platform.alerts]`: the receivers of the platform's alerts (disk, memory, restarts). Only where
/// to send is here; the credentials (the Slack webhook URL, the SMTP password) are in a Secret
/// `scripts/create-secrets alerts` creates, which Alertmanager reads as files. Without a receiver
/// every alert is dropped, and `prenv init` says so.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Alerts {
    /// The Slack channel (`#name`, or `@user`) of an incoming webhook: sends alerts to Slack.
    pub slack_channel: Option<String>,
    /// The addresses alerts are mailed to: sends alerts by e-mail (needs `email_from` and
    /// `smtp_smarthost`).
    pub email_to: Vec<String>,
    /// The sender address of alert mails.
    pub email_from: Option<String>,
    /// The SMTP server, `host:port` (587: STARTTLS, which Alertmanager requires by default).
    pub smtp_smarthost: Option<String>,
    /// The SMTP user; set: Alertmanager logs in with the password from the Secret.
    pub smtp_username: Option<String>,
    /// The Secret in `monitoring` with `slack-webhook-url` and `smtp-password`; unset:
    /// `alertmanager-receivers`.
    pub secret: Option<String>,
}

impl Alerts {
    /// Whether any receiver is configured; without one Alertmanager drops every alert.
    pub fn any(&self) -> bool {
        self.slack_channel.is_some() || !self.email_to.is_empty()
    }

    /// Whether a receiver needs a credential from the Secret (Slack's webhook URL, an SMTP login).
    pub fn needs_secret(&self) -> bool {
        self.slack_channel.is_some() || (!self.email_to.is_empty() && self.smtp_username.is_some())
    }

    pub fn secret(&self) -> &str {
        self.secret.as_deref().unwrap_or(DEFAULT_ALERTS_SECRET)
    }

    /// The checks of `[platform.alerts]`: each receiver complete, each value well formed. One
    /// flat list of checks, longer than most functions so that every rule reads in one place.
    fn validate(&self) -> Result<(), String> {
        if let Some(channel) = &self.slack_channel
            && (!(channel.starts_with('#') || channel.starts_with('@'))
                || channel.len() < 2
                || channel.chars().any(char::is_whitespace))
        {
            return Err(key(
                "platform.alerts.slack_channel",
                channel,
                "is not a Slack channel",
                "give \"#channel\" (or \"@user\"), the one the incoming webhook posts to",
            ));
        }
        for address in self.email_to.iter().chain(&self.email_from) {
            if let Some(problem) = mail_syntax_problem(address) {
                return Err(key(
                    "platform.alerts.email_to / email_from",
                    address,
                    &problem,
                    "give mail addresses like \"oncall@acme.dev\"",
                ));
            }
        }
        if let Some(host) = &self.smtp_smarthost
            && !host
                .rsplit_once(':')
                .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
        {
            return Err(key(
                "platform.alerts.smtp_smarthost",
                host,
                "is not host:port",
                "give the SMTP server with its port, e.g. \"smtp.acme.dev:587\"",
            ));
        }
        let mail_keys_set = self.email_from.is_some() || self.smtp_smarthost.is_some() || self.smtp_username.is_some();
        if self.email_to.is_empty() && mail_keys_set {
            return Err("key `platform.alerts.email_to` is missing, but the other mail keys are set; give the addresses alerts go to (or remove email_from, smtp_smarthost and smtp_username)".into());
        }
        if !self.email_to.is_empty() {
            for (k, set) in [
                ("email_from", self.email_from.is_some()),
                ("smtp_smarthost", self.smtp_smarthost.is_some()),
            ] {
                if !set {
                    return Err(format!(
                        "key `platform.alerts.{k}` is missing; alerts are mailed (email_to is set) and Alertmanager needs the sender and the SMTP server"
                    ));
                }
            }
        }
        if let Some(secret) = &self.secret
            && let Some(problem) = naming::dns_name_problem(secret)
        {
            return Err(key(
                "platform.alerts.secret",
                secret,
                &problem,
                "give a Kubernetes Secret name",
            ));
        }
        Ok(())
    }
}

impl Platform {
    /// The checks on the keys that are set; called by `Config::parse`. The first problem is the error.
    pub(super) fn validate(&self) -> Result<(), String> {
        let checks: [(&str, &Option<String>, Check, &str); 6] = [
            (
                "platform.acme_email",
                &self.acme_email,
                email_problem,
                "give a real address of your team; Let's Encrypt mails expiry notices there",
            ),
            (
                "platform.acme_server",
                &self.acme_server,
                |v| https_url_problem(v, false),
                "give an ACME directory URL, e.g. https://acme-staging-v02.api.letsencrypt.org/directory while trying out",
            ),
            (
                "platform.runners_github_url",
                &self.runners_github_url,
                |v| https_url_problem(v, true),
                "give https://github.com/ORG or https://github.com/ORG/REPO",
            ),
            (
                "platform.runner_image",
                &self.runner_image,
                image_problem,
                "build runner-image/Dockerfile, push it and give it with its tag, e.g. \"ghcr.io/acme/preview-runner:2.321.0\"",
            ),
            (
                "platform.prenv_image",
                &self.prenv_image,
                image_problem,
                "give prenv's image with its release tag, e.g. \"ghcr.io/acme/prenv:v0.1.0\"",
            ),
            (
                "platform.repo_url",
                &self.repo_url,
                |v| (!Platform::is_ssh_url(v)).then(|| "is not an SSH URL".to_string()),
                "give ssh://git@github.com/OWNER/REPO.git: Flux reads the repository with the deploy key scripts/bootstrap-flux creates",
            ),
        ];
        for (k, value, problem_of, fix) in checks {
            if let Some(v) = value
                && let Some(problem) = problem_of(v)
            {
                return Err(key(k, v, &problem, fix));
            }
        }
        self.validate_names()?;
        self.alerts.validate()?;
        if self.dns_provider == Some(DnsProvider::Route53) && self.dns_region.as_deref().is_none_or(str::is_empty) {
            return Err("key `platform.dns_region` is missing; with dns_provider = \"route53\" cert-manager needs the AWS region, e.g. \"eu-west-1\"".into());
        }
        if self.dns_region.is_some() && self.dns_provider != Some(DnsProvider::Route53) {
            return Err(
                "key `platform.dns_region` is set, but only dns_provider = \"route53\" uses it; remove it".into(),
            );
        }
        Ok(())
    }

    /// Host names, the Secret name and the runner namespaces.
    fn validate_names(&self) -> Result<(), String> {
        for (k, v) in [
            ("platform.grafana_host", &self.grafana_host),
            ("platform.receiver_host", &self.receiver_host),
            ("platform.webhook_host", &self.webhook_host),
            ("platform.dns_secret", &self.dns_secret),
        ] {
            if let Some(v) = v
                && let Some(problem) = naming::dns_name_problem(v)
            {
                return Err(key(
                    k,
                    v,
                    &problem,
                    "give a DNS name (a host, or a Kubernetes object name for dns_secret)",
                ));
            }
        }
        for ns in &self.runner_namespaces {
            if let Some(problem) = naming::dns_label_problem(ns) {
                return Err(key(
                    "platform.runner_namespaces",
                    ns,
                    &problem,
                    "give Kubernetes namespace names",
                ));
            }
            if PLATFORM_NAMESPACES.contains(&ns.as_str()) {
                return Err(key(
                    "platform.runner_namespaces",
                    ns,
                    "is a namespace of the platform: a job that may create pods there can read its Secrets and act as its ServiceAccounts",
                    "give only the namespaces your CI deploys to",
                ));
            }
        }
        Ok(())
    }

    /// The first key `prenv init` needs and lacks for any engine, with why and the fix.
    pub fn missing_for_init(&self) -> Option<String> {
        let required = [
            (
                "acme_email",
                self.acme_email.is_some(),
                "the Let's Encrypt account of the wildcard certificate needs a contact address: set it to your team's address",
            ),
            (
                "dns_provider",
                self.dns_provider.is_some(),
                "the wildcard certificate is issued by a DNS-01 challenge: set it to \"cloudflare\", \"digitalocean\" or \"route53\", whichever serves the preview domain's zone",
            ),
            (
                "runners_github_url",
                self.runners_github_url.is_some(),
                "the runner scale set registers with GitHub there: set it to https://github.com/ORG (or ORG/REPO)",
            ),
            (
                "runner_image",
                self.runner_image.is_some(),
                "build runner-image/Dockerfile (the runner plus kubectl and helm), push it, and set it to that image with its tag",
            ),
        ];
        required
            .into_iter()
            .find(|(_, set, _)| !set)
            .map(|(k, _, why)| format!("key `platform.{k}` is missing; {why}"))
    }

    /// `ssh://…` or the scp-like `user@host:path`, the two forms git and Flux clone over SSH.
    pub fn is_ssh_url(url: &str) -> bool {
        url.starts_with("ssh://")
            || (!url.contains("://") && url.split_once('@').is_some_and(|(_, rest)| rest.contains(':')))
    }

    pub fn acme_server(&self) -> &str {
        self.acme_server.as_deref().unwrap_or(LETSENCRYPT_PRODUCTION)
    }

    pub fn dns_secret(&self) -> &str {
        self.dns_secret.as_deref().unwrap_or(DEFAULT_DNS_SECRET)
    }

    pub fn grafana_host(&self, domain: &str) -> String {
        self.grafana_host.clone().unwrap_or_else(|| format!("grafana.{domain}"))
    }

    pub fn receiver_host(&self, domain: &str) -> String {
        self.receiver_host
            .clone()
            .unwrap_or_else(|| format!("flux-webhook.{domain}"))
    }

    pub fn webhook_host(&self, domain: &str) -> String {
        self.webhook_host
            .clone()
            .unwrap_or_else(|| format!("prenv-webhook.{domain}"))
    }

    /// The image of `prenv serve` and `prenv watch`: the configured one, else this release's.
    pub fn prenv_image(&self) -> String {
        self.prenv_image
            .clone()
            .unwrap_or_else(|| format!("{DEFAULT_PRENV_IMAGE}:v{}", env!("CARGO_PKG_VERSION")))
    }
}

/// Why a value is wrong, if it is.
type Check = fn(&str) -> Option<String>;

fn key(k: &str, v: &str, problem: &str, fix: &str) -> String {
    format!("key `{k}` = {v:?} {problem}; {fix}")
}

/// Why `address` is no mail address, if it is not.
fn mail_syntax_problem(address: &str) -> Option<String> {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return Some("is not an e-mail address".into());
    };
    let domain = domain.to_ascii_lowercase();
    if local.is_empty() || local.chars().any(|c| c.is_whitespace() || c == '<' || c == '>') {
        return Some("is not an e-mail address".into());
    }
    if naming::dns_name_problem(&domain).is_some() || !domain.contains('.') {
        return Some(format!("has no valid mail domain ({domain:?})"));
    }
    None
}

/// Why Let's Encrypt would refuse `address` as an account contact, if it would.
fn email_problem(address: &str) -> Option<String> {
    if let Some(problem) = mail_syntax_problem(address) {
        return Some(problem);
    }
    let domain = address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default();
    let tld = domain.rsplit('.').next().unwrap_or_default();
    if FORBIDDEN_MAIL_DOMAINS.contains(&domain.as_str()) || RESERVED_TLDS.contains(&tld) {
        return Some(format!(
            "uses the reserved domain {domain:?}, which Let's Encrypt refuses"
        ));
    }
    None
}

/// Why `url` is no `https://host[/path]` URL; `needs_path` also asks for a path (an org or repository).
fn https_url_problem(url: &str, needs_path: bool) -> Option<String> {
    let Some(rest) = url.strip_prefix("https://") else {
        return Some("is not an https:// URL".into());
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() || host.chars().any(|c| c.is_whitespace()) {
        return Some("has no host".into());
    }
    if needs_path && path.trim_matches('/').is_empty() {
        return Some("names no organization or repository".into());
    }
    None
}

/// Why `image` is not a pinned image reference.
fn image_problem(image: &str) -> Option<String> {
    if image.is_empty() || image.chars().any(|c| c.is_whitespace()) {
        return Some("is not an image reference".into());
    }
    if image.contains("@sha256:") {
        return None;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        None => Some("has no tag, so every runner could pull another image".into()),
        Some((_, "latest")) => Some("is tagged latest, so every runner could pull another image".into()),
        Some((_, "")) => Some("has an empty tag".into()),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform(toml: &str) -> Platform {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn a_complete_platform_section_passes_and_needs_nothing_more() {
        let p = platform(
            "acme_email = \"ops@acme.dev\"\ndns_provider = \"route53\"\ndns_region = \"eu-west-1\"\n\
             runners_github_url = \"https://github.com/acme\"\nrunner_image = \"ghcr.io/acme/preview-runner:2.321.0\"\n\
             runner_namespaces = [\"shop-ci\"]\nrepo_url = \"git@github.com:acme/envs.git\"\n",
        );
        assert_eq!(p.validate(), Ok(()));
        assert_eq!(p.missing_for_init(), None);
        assert_eq!(p.acme_server(), LETSENCRYPT_PRODUCTION);
        assert_eq!(p.grafana_host("preview.acme.dev"), "grafana.preview.acme.dev");
        assert_eq!(p.webhook_host("preview.acme.dev"), "prenv-webhook.preview.acme.dev");
        assert_eq!(
            p.prenv_image(),
            format!("ghcr.io/acme/prenv:v{}", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn bad_values_are_refused_with_the_key_and_the_fix() {
        for (toml, want) in [
            (
                "acme_email = \"platform@example.com\"",
                "`platform.acme_email` = \"platform@example.com\" uses the reserved domain",
            ),
            ("acme_email = \"ops@acme.test\"", "reserved domain \"acme.test\""),
            ("acme_email = \"ops\"", "is not an e-mail address"),
            (
                "acme_server = \"http://acme.local/dir\"",
                "`platform.acme_server` = \"http://acme.local/dir\" is not an https:// URL",
            ),
            ("runners_github_url = \"https://github.com\"", "names no organization"),
            ("runner_image = \"ghcr.io/acme/runner\"", "has no tag"),
            ("runner_image = \"ghcr.io/acme/runner:latest\"", "is tagged latest"),
            ("repo_url = \"https://github.com/acme/envs.git\"", "is not an SSH URL"),
            (
                "runner_namespaces = [\"kube-system\"]",
                "is a namespace of the platform",
            ),
            ("grafana_host = \"Grafana!\"", "`platform.grafana_host`"),
            ("webhook_host = \"hooks_here\"", "`platform.webhook_host`"),
            ("prenv_image = \"ghcr.io/acme/prenv:latest\"", "`platform.prenv_image`"),
            ("dns_provider = \"route53\"", "`platform.dns_region` is missing"),
            (
                "dns_provider = \"cloudflare\"\ndns_region = \"x\"",
                "only dns_provider = \"route53\" uses it",
            ),
        ] {
            let err = platform(toml).validate().unwrap_err();
            assert!(err.contains(want), "{toml}: {err}");
        }
    }

    #[test]
    fn alert_receivers_are_checked_receiver_by_receiver() {
        let ok = platform(
            "[alerts]\nslack_channel = \"#preview\"\nemail_to = [\"oncall@acme.dev\"]\n\
             email_from = \"alerts@acme.dev\"\nsmtp_smarthost = \"smtp.acme.dev:587\"\n",
        );
        assert_eq!(ok.validate(), Ok(()));
        assert!(ok.alerts.any());
        assert_eq!(ok.alerts.secret(), DEFAULT_ALERTS_SECRET);
        assert!(!Platform::default().alerts.any());
        for (toml, want) in [
            ("slack_channel = \"preview\"", "is not a Slack channel"),
            ("email_to = [\"oncall\"]", "is not an e-mail address"),
            (
                "email_to = [\"oncall@acme.dev\"]",
                "`platform.alerts.email_from` is missing",
            ),
            (
                "email_to = [\"oncall@acme.dev\"]\nemail_from = \"a@acme.dev\"",
                "`platform.alerts.smtp_smarthost` is missing",
            ),
            ("smtp_smarthost = \"smtp.acme.dev\"", "is not host:port"),
            ("email_from = \"a@acme.dev\"", "`platform.alerts.email_to` is missing"),
            ("secret = \"Bad_Name\"", "`platform.alerts.secret`"),
        ] {
            let err = platform(&format!("[alerts]\n{toml}\n")).validate().unwrap_err();
            assert!(err.contains(want), "{toml}: {err}");
        }
    }

    #[test]
    fn init_names_the_first_missing_key() {
        let mut p = Platform::default();
        assert!(
            p.missing_for_init()
                .unwrap()
                .contains("`platform.acme_email` is missing")
        );
        p.acme_email = Some("ops@acme.dev".into());
        assert!(p.missing_for_init().unwrap().contains("`platform.dns_provider`"));
        p.dns_provider = Some(DnsProvider::Cloudflare);
        assert!(p.missing_for_init().unwrap().contains("`platform.runners_github_url`"));
        p.runners_github_url = Some("https://github.com/acme".into());
        assert!(p.missing_for_init().unwrap().contains("`platform.runner_image`"));
    }

    #[test]
    fn ssh_urls_are_recognised_in_both_forms() {
        assert!(Platform::is_ssh_url("ssh://git@github.com/acme/envs.git"));
        assert!(Platform::is_ssh_url("git@github.com:acme/envs.git"));
        assert!(!Platform::is_ssh_url("https://github.com/acme/envs.git"));
        assert!(!Platform::is_ssh_url("/srv/envs.git"));
    }
}
