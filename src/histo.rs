//! Latency histograms (HDR: 3 significant digits at any magnitude, constant memory) and the one
//! line the peers print them as.

use hdrhistogram::Histogram;

/// The quantiles a report carries for plotting the distribution.
pub const CDF_QUANTILES: [f64; 12] = [
    0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 0.9999, 0.99999, 1.0,
];

/// Nanosecond latencies.
pub struct Histo(Histogram<u64>);

impl Default for Histo {
    fn default() -> Self {
        Histo::new()
    }
}

impl Histo {
    pub fn new() -> Histo {
        Histo(Histogram::new(3).expect("3 significant digits is valid"))
    }

    /// Records one latency (saturating: a histogram that cannot grow keeps its largest bucket).
    pub fn record(&mut self, ns: u64) {
        let _ = self.0.record(ns.max(1));
    }

    /// Records a round trip as its one-way half.
    pub fn record_rtt(&mut self, rtt_ns: u64) {
        self.record(rtt_ns / 2);
    }

    /// `count= p50_ns= p99_ns= p999_ns= max_ns= cdf=q:v;q:v...` (0 everywhere when empty).
    pub fn report(&self) -> String {
        let q = |q: f64| {
            if self.0.is_empty() {
                0
            } else {
                self.0.value_at_quantile(q)
            }
        };
        let cdf: Vec<String> = CDF_QUANTILES
            .iter()
            .map(|&p| format!("{p}:{}", q(p)))
            .collect();
        format!(
            "count={} p50_ns={} p99_ns={} p999_ns={} max_ns={} cdf={}",
            self.0.len(),
            q(0.5),
            q(0.99),
            q(0.999),
            if self.0.is_empty() { 0 } else { self.0.max() },
            cdf.join(";")
        )
    }
}
