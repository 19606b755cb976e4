//! Process metrics (spec §6: memory, CPU, open fds), with `process_cpu_seconds_total` to the
//! nanosecond.
//!
//! The prometheus crate's process collector reads CPU time from `/proc/self/stat` and exports it
//! in whole seconds (an integer counter), so a gateway that uses 0.4 s of CPU a minute shows a
//! flat line and then a step. This collector delegates everything else to it and replaces that
//! one family's value with `clock_gettime(CLOCK_PROCESS_CPUTIME_ID)`: user and system time of
//! every thread of the process, in nanoseconds.

use prometheus::core::{Collector, Desc};
use prometheus::process_collector::ProcessCollector;
use prometheus::proto::{Counter, MetricFamily};

pub const CPU_SECONDS: &str = "process_cpu_seconds_total";

pub struct ProcessMetrics {
    inner: ProcessCollector,
}

impl ProcessMetrics {
    pub fn for_self() -> ProcessMetrics {
        ProcessMetrics {
            inner: ProcessCollector::for_self(),
        }
    }
}

/// CPU time used by this process so far (user + system, all threads), in seconds.
pub fn cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

impl Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&Desc> {
        self.inner.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.inner.collect();
        for mf in families.iter_mut().filter(|mf| mf.name() == CPU_SECONDS) {
            for m in mf.mut_metric().iter_mut() {
                let mut c = Counter::default();
                c.set_value(cpu_seconds());
                m.set_counter(c);
            }
        }
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_are_exported_with_a_fraction() {
        // Burn a little CPU so the value is not 0.
        let start = tokio::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(30) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let r = prometheus::Registry::new();
        r.register(Box::new(ProcessMetrics::for_self())).unwrap();
        let fams = r.gather();
        let cpu = fams.iter().find(|f| f.name() == CPU_SECONDS).unwrap();
        let v = cpu.get_metric()[0].get_counter().value();
        assert!(v > 0.0 && v.fract() != 0.0, "{v}");
        // The other process metrics are still there.
        assert!(fams.iter().any(|f| f.name() == "process_open_fds"));
        assert!(fams
            .iter()
            .any(|f| f.name() == "process_resident_memory_bytes"));
    }
}
