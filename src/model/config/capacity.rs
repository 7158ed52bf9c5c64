//! `[capacity]`: how many environments the cluster runs at once, and the quota arithmetic that
//! says whether that many fit on the node beside the platform. A limit that the node cannot hold
//! is refused at load, with the numbers and the largest limit that fits.

use serde::{Deserialize, Serialize};

use super::{Config, Database};
use crate::model::quantity::{Bytes, Cpu};

/// What the seed platform takes of its node before any environment runs, CPU: a budget for the
/// requests of k3s's own pods, Flux (or Argo CD), cert-manager, CloudNativePG, Traefik, the
/// monitoring stack, the runner controller and prenv itself (most of them request little or no
/// CPU; what is left is headroom). See the README's capacity section for the arithmetic.
pub const RESERVED_CPU: &str = "1500m";
/// The same for memory: the observability stack's limits (5,344 MiB, counted by tests/init.rs),
/// the controllers' limits the scaffold sets (1,152 MiB), and room for k3s, Flux, prenv and a
/// runner job.
pub const RESERVED_MEMORY: &str = "12Gi";

/// The capacity guard. Every key is optional: without `max_environments` (and
/// `max_environments_per_project`) nothing is ever queued, as before the guard existed.
/// Projects that share one environments repository share the cluster: give them the same
/// `[capacity]`, since each project's sync decides with its own.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Capacity {
    /// Environments the cluster runs at once, every project of the environments repository
    /// together; a new environment beyond it waits in the queue. Unset: no limit.
    pub max_environments: Option<u32>,
    /// Environments one project runs at once (at most `max_environments`). Unset: only the
    /// cluster's limit.
    pub max_environments_per_project: Option<u32>,
    /// The node's allocatable CPU (`kubectl describe node`, "Allocatable"; the sum for several
    /// nodes). With `node_memory`, the load checks that `max_environments` environments of this
    /// project's quota fit beside `reserved_cpu`. Unset: no check.
    pub node_cpu: Option<String>,
    /// The node's allocatable memory, for the same check.
    pub node_memory: Option<String>,
    /// CPU the platform takes before any environment runs.
    pub reserved_cpu: String,
    /// Memory the platform takes before any environment runs.
    pub reserved_memory: String,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            max_environments: None,
            max_environments_per_project: None,
            node_cpu: None,
            node_memory: None,
            reserved_cpu: RESERVED_CPU.into(),
            reserved_memory: RESERVED_MEMORY.into(),
        }
    }
}

impl Capacity {
    /// Whether any limit is set: only then does a plan count the cluster's environments.
    pub fn limited(&self) -> bool {
        self.max_environments.is_some() || self.max_environments_per_project.is_some()
    }
}

/// The quota of one environment with `databases`: the base plus one step per database (RNF-13),
/// exactly what its ResourceQuota allows (requests and limits alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvQuota {
    pub cpu: Cpu,
    pub memory: Bytes,
    pub storage: Bytes,
    pub pods: u32,
}

/// The node arithmetic of a config: `max` environments of `per_env` beside `reserved`, against
/// the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fit {
    pub max: u32,
    pub per_env: EnvQuota,
    pub reserved: (Cpu, Bytes),
    pub node: (Cpu, Bytes),
}

impl Fit {
    /// What `max` environments and the platform need together.
    pub fn needed(&self) -> (Cpu, Bytes) {
        let n = u64::from(self.max);
        (
            Cpu(self.per_env.cpu.0.saturating_mul(n)) + self.reserved.0,
            Bytes(self.per_env.memory.0.saturating_mul(n)) + self.reserved.1,
        )
    }

    pub fn fits(&self) -> bool {
        let (cpu, memory) = self.needed();
        cpu <= self.node.0 && memory <= self.node.1
    }

    /// The most environments of this quota the node holds beside the platform.
    pub fn most(&self) -> u64 {
        let room = |node: u64, reserved: u64, each: u64| node.saturating_sub(reserved).checked_div(each);
        let cpu = room(self.node.0.0, self.reserved.0.0, self.per_env.cpu.0);
        let memory = room(self.node.1.0, self.reserved.1.0, self.per_env.memory.0);
        match (cpu, memory) {
            (Some(c), Some(m)) => c.min(m),
            (Some(c), None) => c,
            (None, Some(m)) => m,
            (None, None) => u64::MAX,
        }
    }

    /// The arithmetic in one line, for `prenv plan` and errors.
    pub fn explain(&self) -> String {
        let (cpu, memory) = self.needed();
        format!(
            "{} environments × {}/{} + reserved {}/{} = {cpu}/{memory} of the node's {}/{}",
            self.max, self.per_env.cpu, self.per_env.memory, self.reserved.0, self.reserved.1, self.node.0, self.node.1
        )
    }
}

impl Config {
    /// The quota of one environment of this project (its `databases`).
    pub fn env_quota(&self) -> EnvQuota {
        self.quota_for(&self.databases)
    }

    /// The quota of an environment with `databases`; quantities are validated at load.
    pub fn quota_for(&self, databases: &[Database]) -> EnvQuota {
        let q = &self.quota;
        let cpu = |s: &str| Cpu::parse(s).unwrap_or_default();
        let bytes = |s: &str| Bytes::parse(s).unwrap_or_default();
        let mut out = EnvQuota {
            cpu: cpu(&q.cpu),
            memory: bytes(&q.memory),
            storage: Bytes(0),
            pods: q.pods,
        };
        for step in databases.iter().map(|db| self.quota_step(*db)) {
            out.cpu = out.cpu + cpu(&step.cpu);
            out.memory = out.memory + bytes(&step.memory);
            out.storage = out.storage + bytes(&step.storage);
            out.pods += step.pods;
        }
        out
    }

    /// The node arithmetic, when `capacity.max_environments` and both node sizes are set.
    pub fn capacity_fit(&self) -> Option<Fit> {
        let c = &self.capacity;
        let node = (
            Cpu::parse(c.node_cpu.as_deref()?)?,
            Bytes::parse(c.node_memory.as_deref()?)?,
        );
        Some(Fit {
            max: c.max_environments?,
            per_env: self.env_quota(),
            reserved: (
                Cpu::parse(&c.reserved_cpu).unwrap_or_default(),
                Bytes::parse(&c.reserved_memory).unwrap_or_default(),
            ),
            node,
        })
    }

    /// The limits mean something, and the node holds them.
    pub(super) fn validate_capacity(&self) -> std::result::Result<(), String> {
        let c = &self.capacity;
        for (k, v) in [
            ("capacity.max_environments", c.max_environments),
            ("capacity.max_environments_per_project", c.max_environments_per_project),
        ] {
            if v == Some(0) {
                return Err(format!(
                    "key `{k}` = 0 would queue every new environment forever; give at least 1, or leave the key out for no limit"
                ));
            }
        }
        if let (Some(cluster), Some(project)) = (c.max_environments, c.max_environments_per_project)
            && project > cluster
        {
            return Err(format!(
                "key `capacity.max_environments_per_project` = {project} is above `capacity.max_environments` = {cluster}: a project can never have more than the cluster; lower it to at most {cluster}"
            ));
        }
        for (k, v) in [
            ("capacity.node_cpu", c.node_cpu.as_deref()),
            ("capacity.reserved_cpu", Some(c.reserved_cpu.as_str())),
        ] {
            if let Some(v) = v
                && Cpu::parse(v).is_none()
            {
                return Err(format!(
                    "key `{k}` = {v:?} is not a CPU quantity; write it like \"8\" or \"7500m\""
                ));
            }
        }
        for (k, v) in [
            ("capacity.node_memory", c.node_memory.as_deref()),
            ("capacity.reserved_memory", Some(c.reserved_memory.as_str())),
        ] {
            if let Some(v) = v
                && Bytes::parse(v).is_none()
            {
                return Err(format!(
                    "key `{k}` = {v:?} is not a byte quantity; write it like \"32Gi\" or \"12288Mi\""
                ));
            }
        }
        if c.node_cpu.is_some() != c.node_memory.is_some() {
            return Err("keys `capacity.node_cpu` and `capacity.node_memory` go together: set both (the node's allocatable CPU and memory) or neither".into());
        }
        if c.node_cpu.is_some() && c.max_environments.is_none() {
            return Err("key `capacity.max_environments` is missing: the node check (`capacity.node_cpu`, `capacity.node_memory`) multiplies it by the quota; set it, or leave out the node sizes".into());
        }
        if let Some(fit) = self.capacity_fit().filter(|f| !f.fits()) {
            let dbs: Vec<&str> = self.databases.iter().map(|d| d.name()).collect();
            return Err(format!(
                "key `capacity.max_environments` = {} does not fit the node: {} (the quota of an environment with databases [{}], from `[quota]`); lower it to {} or less, lower `[quota]`, or give a larger node",
                fit.max,
                fit.explain(),
                dbs.join(", "),
                fit.most()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(databases: &str, capacity: &str) -> std::result::Result<Config, String> {
        let text = format!(
            "project_id = \"shop\"\ndomain = \"p.example.com\"\nimage = \"r/i\"\nengine = \"flux\"\ndatabases = {databases}\n[secrets]\nage_recipients = [\"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\"]\n[capacity]\n{capacity}\n"
        );
        Config::parse(&text, "prenv.toml").map_err(|e| e.to_string())
    }

    const SEED_NODE: &str = "node_cpu = \"8\"\nnode_memory = \"32Gi\"\n";

    #[test]
    fn without_a_limit_nothing_is_limited_and_nothing_is_checked() {
        let c = config("[\"postgres\"]", "").unwrap();
        assert!(!c.capacity.limited());
        assert_eq!(c.capacity_fit(), None);
    }

    #[test]
    fn the_seed_node_holds_eight_postgres_environments_and_five_with_both_databases() {
        let c = config("[\"postgres\"]", &format!("max_environments = 8\n{SEED_NODE}")).unwrap();
        let fit = c.capacity_fit().unwrap();
        assert_eq!(
            fit.explain(),
            "8 environments × 800m/1Gi + reserved 1500m/12Gi = 7900m/20Gi of the node's 8/32Gi"
        );
        assert_eq!(fit.most(), 8);
        let both = config(
            "[\"postgres\", \"mariadb\"]",
            &format!("max_environments = 5\n{SEED_NODE}"),
        )
        .unwrap();
        let fit = both.capacity_fit().unwrap();
        assert!(fit.fits(), "{}", fit.explain());
        assert_eq!(fit.most(), 5);
        assert_eq!(fit.per_env.storage, Bytes(2 << 30));
    }

    #[test]
    fn bad_capacity_settings_are_refused_naming_the_key() {
        // (the [capacity] table, the databases, what the error must say)
        let table: &[(&str, &str, &[&str])] = &[
            (
                "max_environments = 0",
                "[]",
                &["capacity.max_environments", "at least 1"],
            ),
            (
                "max_environments_per_project = 0",
                "[]",
                &["capacity.max_environments_per_project", "at least 1"],
            ),
            (
                "max_environments = 4\nmax_environments_per_project = 5",
                "[]",
                &["capacity.max_environments_per_project` = 5", "above", "at most 4"],
            ),
            (
                "max_environments = 4\nnode_cpu = \"8\"",
                "[]",
                &["capacity.node_memory", "both"],
            ),
            (
                "node_cpu = \"8\"\nnode_memory = \"32Gi\"",
                "[]",
                &["capacity.max_environments` is missing"],
            ),
            (
                "max_environments = 4\nnode_cpu = \"lots\"\nnode_memory = \"1Gi\"",
                "[]",
                &["capacity.node_cpu", "CPU"],
            ),
            ("reserved_memory = \"12G\"", "[]", &["capacity.reserved_memory", "32Gi"]),
            (
                "max_environments = 6\nnode_cpu = \"8\"\nnode_memory = \"32Gi\"",
                "[\"postgres\", \"mariadb\"]",
                &[
                    "capacity.max_environments` = 6 does not fit",
                    "6 environments × 1300m/1536Mi + reserved 1500m/12Gi = 9300m/21Gi of the node's 8/32Gi",
                    "postgres, mariadb",
                    "lower it to 5 or less",
                ],
            ),
        ];
        for (capacity, dbs, wants) in table {
            let err = config(dbs, capacity).expect_err(capacity);
            for want in *wants {
                assert!(err.contains(want), "{capacity}: {err:?} lacks {want:?}");
            }
        }
    }

    #[test]
    fn a_per_project_limit_alone_is_a_limit() {
        let c = config("[]", "max_environments_per_project = 2").unwrap();
        assert!(c.capacity.limited());
    }
}
