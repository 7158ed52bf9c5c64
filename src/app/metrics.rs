//! Metrics in Prometheus's text format: a histogram of seconds, and the one writer of the families
//! the receiver and the watcher expose, which lets several projects add their labelled samples to
//! one family.

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

    /// Appends the histogram as one family of `out`, its samples under `out`'s labels.
    pub fn render(&self, name: &str, help: &str, out: &mut Exposition) {
        let labels = out.labels.clone();
        let family = out.family_mut(name, help, "histogram");
        let with = |le: &str| join_labels(&labels, &format!("le=\"{le}\""));
        for (bucket, le) in self.buckets.iter().zip(self.bounds) {
            family.push_str(&format!(
                "{name}_bucket{{{}}} {}\n",
                with(&le.to_string()),
                bucket.load(Ordering::Relaxed)
            ));
        }
        let count = self.count.load(Ordering::Relaxed);
        let plain = braced(&labels);
        family.push_str(&format!("{name}_bucket{{{}}} {count}\n", with("+Inf")));
        family.push_str(&format!(
            "{name}_sum{plain} {}\n{name}_count{plain} {count}\n",
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

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A Prometheus text exposition being written: families in the order first written, each with its
/// `# HELP` and `# TYPE` once, however many writers (one per project) add samples to it. Samples
/// carry the labels set by [`Exposition::scope`] (`project="shop"`) before their own.
#[derive(Debug, Default)]
pub struct Exposition {
    families: Vec<(String, String)>,
    labels: String,
}

impl Exposition {
    /// Labels every sample written from now on with `pairs` (empty: none).
    pub fn scope(&mut self, pairs: &[(&str, &str)]) {
        self.labels = pairs
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect::<Vec<_>>()
            .join(",");
    }

    /// The body of family `name`, created with its header the first time.
    fn family_mut(&mut self, name: &str, help: &str, kind: &str) -> &mut String {
        let at = match self.families.iter().position(|(n, _)| n == name) {
            Some(at) => at,
            None => {
                let header = format!("# HELP {name} {help}\n# TYPE {name} {kind}\n");
                self.families.push((name.to_string(), header));
                self.families.len() - 1
            }
        };
        &mut self.families[at].1
    }

    /// Adds one sample per `(label value, value)` to family `name`; `label` names the label
    /// (`None`: one sample with the scope's labels only).
    pub fn family(&mut self, name: &str, help: &str, kind: Kind, label: Option<&str>, samples: &[(&str, i64)]) {
        let scope = self.labels.clone();
        let family = self.family_mut(name, help, kind.word());
        for (value_of_label, value) in samples {
            let labels = match label {
                Some(label) => join_labels(&scope, &format!("{label}=\"{}\"", escape(value_of_label))),
                None => scope.clone(),
            };
            family.push_str(&format!("{name}{} {value}\n", braced(&labels)));
        }
    }

    /// The text format, ready to serve.
    pub fn text(self) -> String {
        self.families.into_iter().map(|(_, body)| body).collect()
    }
}

fn join_labels(scope: &str, own: &str) -> String {
    if scope.is_empty() {
        own.to_string()
    } else {
        format!("{scope},{own}")
    }
}

fn braced(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    }
}

/// A label value as the text format writes it: backslash, double quote and line feed escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// An unlabelled sample of `value`, for [`Exposition::family`].
pub fn one(value: i64) -> [(&'static str, i64); 1] {
    [("", value)]
}

/// A counter's value for [`Exposition::family`].
pub fn read(counter: &AtomicU64) -> i64 {
    i64::try_from(counter.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::{Exposition, Histogram, Kind, one};

    #[test]
    fn families_are_written_in_the_text_format() {
        let mut out = Exposition::default();
        out.family(
            "x_total",
            "Things.",
            Kind::Counter,
            Some("outcome"),
            &[("ok", 2), ("error", 0)],
        );
        out.family("y", "A level.", Kind::Gauge, None, &one(-1));
        assert_eq!(
            out.text(),
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{outcome=\"ok\"} 2\nx_total{outcome=\"error\"} 0\n# HELP y A level.\n# TYPE y gauge\ny -1\n"
        );
    }

    #[test]
    fn buckets_are_cumulative_and_rendered_in_prometheus_format() {
        let h = Histogram::new(&[1.0, 5.0]);
        h.observe(0.5);
        h.observe(3.0);
        h.observe(10.0);
        let mut out = Exposition::default();
        h.render("x_seconds", "help", &mut out);
        assert_eq!(
            out.text(),
            "# HELP x_seconds help\n# TYPE x_seconds histogram\nx_seconds_bucket{le=\"1\"} 1\nx_seconds_bucket{le=\"5\"} 2\nx_seconds_bucket{le=\"+Inf\"} 3\nx_seconds_sum 13.5\nx_seconds_count 3\n"
        );
    }

    #[test]
    fn each_project_adds_its_samples_to_one_family_with_one_header() {
        let h = Histogram::new(&[1.0]);
        h.observe(0.5);
        let mut out = Exposition::default();
        out.family("up", "Up.", Kind::Gauge, None, &one(1));
        for (project, n) in [("shop", 2), ("blog", 3)] {
            out.scope(&[("project", project)]);
            out.family("x_total", "Things.", Kind::Counter, Some("outcome"), &[("ok", n)]);
            h.render("x_seconds", "help", &mut out);
        }
        assert_eq!(
            out.text(),
            "# HELP up Up.\n# TYPE up gauge\nup 1\n\
             # HELP x_total Things.\n# TYPE x_total counter\n\
             x_total{project=\"shop\",outcome=\"ok\"} 2\nx_total{project=\"blog\",outcome=\"ok\"} 3\n\
             # HELP x_seconds help\n# TYPE x_seconds histogram\n\
             x_seconds_bucket{project=\"shop\",le=\"1\"} 1\nx_seconds_bucket{project=\"shop\",le=\"+Inf\"} 1\n\
             x_seconds_sum{project=\"shop\"} 0.5\nx_seconds_count{project=\"shop\"} 1\n\
             x_seconds_bucket{project=\"blog\",le=\"1\"} 1\nx_seconds_bucket{project=\"blog\",le=\"+Inf\"} 1\n\
             x_seconds_sum{project=\"blog\"} 0.5\nx_seconds_count{project=\"blog\"} 1\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = Exposition::default();
        out.scope(&[("project", "a\"b\\c\nd")]);
        out.family("x", "X.", Kind::Gauge, None, &one(0));
        assert!(out.text().contains("x{project=\"a\\\"b\\\\c\\nd\"} 0\n"));
    }
}
