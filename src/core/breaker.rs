//! The circuit breaker: one run may not prune a large share of the environments at once. A GitHub
//! outage or a wrong snapshot looks exactly like "every PR closed"; the breaker turns that into an
//! error the operator reads, instead of deleted namespaces.

use crate::model::config;

use super::plan::{Action, Plan};

/// The circuit breaker: refuses a plan that prunes more than `max_share` of the existing environments
/// when more than `min_envs` exist, unless the operator allowed it for this run.
pub fn check_mass_prune(plan: &Plan, existing: usize, sync: &config::Sync, allow: bool) -> crate::Result<()> {
    let prunes = plan.count(Action::Prune);
    let share = if existing == 0 {
        0.0
    } else {
        prunes as f64 / existing as f64
    };
    if allow || existing <= sync.breaker_min_envs || share <= sync.max_prune_share {
        return Ok(());
    }
    Err(crate::Error::MassPrune {
        prunes,
        existing,
        limit_percent: (sync.max_prune_share * 100.0).round() as u32,
        min_envs: sync.breaker_min_envs,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::core::plan::plan;
    use crate::core::plan::tests::{NOW, at, closed, config, env_meta_for, pr};
    use crate::model::meta::EnvMeta;
    use crate::model::naming::EnvName;

    #[test]
    fn the_breaker_trips_on_mass_prunes_only() {
        let cfg = config();
        let existing_n = |n: u64| -> BTreeMap<EnvName, EnvMeta> {
            (1..=n)
                .map(|i| {
                    let env = EnvName::new("shop", i).unwrap();
                    (env.clone(), env_meta_for(&cfg, &pr(i), env, at(NOW)))
                })
                .collect()
        };
        let close = |n: u64| closed(pr(n), "2026-11-24T11:00:00Z", &[]);
        // (existing envs, PRs closed, allowed, trips)
        let table = [
            (10, 5, false, false),
            (10, 6, false, true),
            (10, 6, true, false),
            (4, 4, false, false),
            (5, 3, false, true),
        ];
        for (existing, closing, allow, trips) in table {
            let envs = existing_n(existing);
            let prs: Vec<_> = (1..=existing)
                .map(|n| if n <= closing { close(n) } else { pr(n) })
                .collect();
            let p = plan(&cfg, &prs, &envs, at(NOW));
            assert_eq!(p.count(Action::Prune), closing as usize);
            let result = check_mass_prune(&p, envs.len(), &cfg.sync, allow);
            assert_eq!(
                result.is_err(),
                trips,
                "{existing} existing, {closing} closing, allow {allow}"
            );
        }
    }
}
