//! Metrics in Prometheus's text format: a histogram of seconds, and the one writer of counter and
//! gauge families the receiver and the watcher expose.

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

/// The kind of a metric family.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Counter,
    Gauge,
}

/// Appends one metric family: its `# HELP` and `# TYPE` lines, then one sample per
/// `(label value, value)`; `label` names the label (`None`: one unlabelled sample).
pub fn family(out: &mut String, name: &str, help: &str, kind: Kind, label: Option<&str>, samples: &[(&str, i64)]) {
    let kind = match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
    };
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    for (value_of_label, value) in samples {
        match label {
            Some(label) => out.push_str(&format!("{name}{{{label}=\"{value_of_label}\"}} {value}\n")),
            None => out.push_str(&format!("{name} {value}\n")),
        }
    }
}

/// An unlabelled sample of `value`, for [`family`].
pub fn one(value: i64) -> [(&'static str, i64); 1] {
    [("", value)]
}

/// A counter's value for [`family`].
pub fn read(counter: &AtomicU64) -> i64 {
    i64::try_from(counter.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    #[test]
    fn families_are_written_in_the_text_format() {
        let mut out = String::new();
        super::family(
            &mut out,
            "x_total",
            "Things.",
            super::Kind::Counter,
            Some("outcome"),
            &[("ok", 2), ("error", 0)],
        );
        super::family(&mut out, "y", "A level.", super::Kind::Gauge, None, &super::one(-1));
        assert_eq!(
            out,
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{outcome=\"ok\"} 2\nx_total{outcome=\"error\"} 0\n# HELP y A level.\n# TYPE y gauge\ny -1\n"
        );
    }

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
