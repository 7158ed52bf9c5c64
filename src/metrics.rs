//! The one metric shape prenv needs beyond counters, a histogram, in Prometheus's text format.

use std::sync::atomic::{AtomicU64, Ordering};

/// A cumulative histogram of seconds with fixed upper bounds.
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, seconds: f64) {
        for (bucket, le) in self.buckets.iter().zip(self.bounds) {
            if seconds <= *le {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }

    /// Appends the `# HELP`/`# TYPE` header, the buckets, the sum and the count.
    pub fn render(&self, name: &str, help: &str, out: &mut String) {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
        for (bucket, le) in self.buckets.iter().zip(self.bounds) {
            out.push_str(&format!(
                "{name}_bucket{{le=\"{le}\"}} {}\n",
                bucket.load(Ordering::Relaxed)
            ));
        }
        let count = self.count.load(Ordering::Relaxed);
        out.push_str(&format!("{name}_bucket{{le=\"+Inf\"}} {count}\n"));
        out.push_str(&format!(
            "{name}_sum {}\n{name}_count {count}\n",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        ));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn buckets_are_cumulative_and_rendered_in_prometheus_format() {
        let h = super::Histogram::new(&[1.0, 5.0]);
        h.observe(0.5);
        h.observe(3.0);
        h.observe(10.0);
        let mut out = String::new();
        h.render("x_seconds", "help", &mut out);
        assert_eq!(
            out,
            "# HELP x_seconds help\n# TYPE x_seconds histogram\nx_seconds_bucket{le=\"1\"} 1\nx_seconds_bucket{le=\"5\"} 2\nx_seconds_bucket{le=\"+Inf\"} 3\nx_seconds_sum 13.5\nx_seconds_count 3\n"
        );
    }
}
