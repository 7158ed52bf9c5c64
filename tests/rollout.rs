//! A new commit rolls the app without taking the preview offline: the Deployment surges one pod
//! (`maxUnavailable: 0`), so the namespace's ResourceQuota must admit the running pod, the surge pod
//! and every database pod at once. A quota that refuses the surge pod stalls the rollout (the
//! ReplicaSet controller's pod creation is forbidden by `exceeded quota`), which is exactly the
//! broken preview this strategy exists to avoid. Checked on the real `kubectl kustomize` output.

mod common;

use common::*;
use prenv::model::quantity::{Bytes, Cpu};
use serde_yaml::Value;

/// What the pods of one environment hold at the peak of a rollout.
#[derive(Debug, Default)]
struct Peak {
    requests_cpu: Cpu,
    limits_cpu: Cpu,
    requests_memory: Bytes,
    limits_memory: Bytes,
    pods: u64,
}

impl Peak {
    /// Adds `count` pods whose containers have `resources` (each a container's `resources`).
    fn add(&mut self, count: u64, resources: &[&Value]) {
        for _ in 0..count {
            self.pods += 1;
            for r in resources {
                let q = |kind: &str, what: &str| str_at(r, &[kind, what]).unwrap_or("0").to_string();
                self.requests_cpu = self.requests_cpu + Cpu::parse(&q("requests", "cpu")).unwrap();
                self.limits_cpu = self.limits_cpu + Cpu::parse(&q("limits", "cpu")).unwrap();
                self.requests_memory = self.requests_memory + Bytes::parse(&q("requests", "memory")).unwrap();
                self.limits_memory = self.limits_memory + Bytes::parse(&q("limits", "memory")).unwrap();
            }
        }
    }
}

fn containers(workload: &Value) -> Vec<&Value> {
    workload["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("a pod template with containers")
        .iter()
        .map(|c| &c["resources"])
        .collect()
}

fn int(v: &Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(1)
}

#[test]
fn the_quota_admits_the_surge_pod_beside_the_running_one_and_every_database() {
    for dbs in ["[]", "[\"postgres\"]", "[\"mariadb\"]", "[\"postgres\", \"mariadb\"]"] {
        let objects = render_env_with_databases(dbs);
        let kind = |k: &'static str| objects.iter().filter(move |o| str_at(o, &["kind"]) == Some(k));
        let mut peak = Peak::default();
        for app in kind("Deployment") {
            let strategy = &app["spec"]["strategy"];
            assert_eq!(str_at(strategy, &["type"]), Some("RollingUpdate"), "{dbs}");
            assert_eq!(
                int(&strategy["rollingUpdate"]["maxUnavailable"]),
                0,
                "{dbs}: the running pod stays until the new one is ready"
            );
            let surge = int(&strategy["rollingUpdate"]["maxSurge"]);
            peak.add(int(&app["spec"]["replicas"]) + surge, &containers(app));
        }
        for db in kind("StatefulSet") {
            // A StatefulSet replaces its pod in place (no surge): the database keeps its volume.
            assert!(str_at(&db["spec"]["updateStrategy"], &["type"]).is_none_or(|t| t == "RollingUpdate"));
            assert!(
                db["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"].is_null(),
                "{dbs}"
            );
            peak.add(int(&db["spec"]["replicas"]), &containers(db));
        }
        for cluster in kind("Cluster") {
            peak.add(int(&cluster["spec"]["instances"]), &[&cluster["spec"]["resources"]]);
        }
        let quota = kind("ResourceQuota").next().expect("a quota");
        let hard = |k: &str| str_at(quota, &["spec", "hard", k]).unwrap().to_string();
        let checks = [
            (
                "requests.cpu",
                peak.requests_cpu <= Cpu::parse(&hard("requests.cpu")).unwrap(),
            ),
            (
                "limits.cpu",
                peak.limits_cpu <= Cpu::parse(&hard("limits.cpu")).unwrap(),
            ),
            (
                "requests.memory",
                peak.requests_memory <= Bytes::parse(&hard("requests.memory")).unwrap(),
            ),
            (
                "limits.memory",
                peak.limits_memory <= Bytes::parse(&hard("limits.memory")).unwrap(),
            ),
            ("pods", peak.pods <= hard("pods").parse::<u64>().unwrap()),
        ];
        for (what, fits) in checks {
            assert!(
                fits,
                "{dbs}: {what} at the rollout's peak {peak:?} exceeds the quota {quota:?}"
            );
        }
    }
}
