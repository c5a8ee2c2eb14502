//! The criterion settings of the micro benches: a short warm-up, then `measurement` of
//! `samples` samples (the 2-core machine cannot afford criterion's 5 s × 100 defaults).

use criterion::Criterion;
use std::time::Duration;

/// Criterion with a 500 ms warm-up and the given measurement time and sample count.
pub(crate) fn short(measurement: Duration, samples: usize) -> Criterion {
    Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(measurement).sample_size(samples)
}
