//! How many distinct subjects each principal touched recently: bulk access needs an approval.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clover_model::PrincipalId;

/// Allowed reads per principal over a sliding window, in memory.
#[derive(Debug)]
pub struct Touches {
    window: Duration,
    seen: Mutex<HashMap<PrincipalId, Window>>,
}

/// One principal's reads in the window: in time order, and counted per subject, so that both
/// expiring old reads and counting distinct subjects cost O(1) per read.
#[derive(Debug, Default)]
struct Window {
    reads: VecDeque<(Instant, String)>,
    per_subject: HashMap<String, usize>,
}

impl Window {
    fn expire(&mut self, window: Duration) {
        while let Some((at, _)) = self.reads.front() {
            if at.elapsed() <= window {
                break;
            }
            if let Some((_, subject)) = self.reads.pop_front()
                && let Some(count) = self.per_subject.get_mut(&subject)
            {
                *count -= 1;
                if *count == 0 {
                    self.per_subject.remove(&subject);
                }
            }
        }
    }
}

impl Touches {
    /// A tracker over `window`.
    pub fn new(window: Duration) -> Self {
        Self { window, seen: Mutex::new(HashMap::new()) }
    }

    /// The distinct subjects `principal` touched in the window, `subject` included.
    pub fn count(&self, principal: &PrincipalId, subject: &str) -> i64 {
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(window) = seen.get_mut(principal) else { return 1 };
        window.expire(self.window);
        let distinct = window.per_subject.len() + usize::from(!window.per_subject.contains_key(subject));
        i64::try_from(distinct).unwrap_or(i64::MAX)
    }

    /// Records that `principal` read `subject`'s data now.
    pub fn record(&self, principal: &PrincipalId, subject: String) {
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let window = seen.entry(principal.clone()).or_default();
        window.expire(self.window);
        *window.per_subject.entry(subject.clone()).or_default() += 1;
        window.reads.push_back((Instant::now(), subject));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_distinct_subjects_per_principal_in_the_window() {
        let touches = Touches::new(Duration::from_millis(50));
        let (ana, bo): (PrincipalId, PrincipalId) = ("ana".parse().unwrap(), "bo".parse().unwrap());
        assert_eq!(touches.count(&ana, "s1"), 1);
        touches.record(&ana, "s1".into());
        touches.record(&ana, "s1".into());
        touches.record(&ana, "s2".into());
        assert_eq!(touches.count(&ana, "s1"), 2);
        assert_eq!(touches.count(&ana, "s3"), 3);
        assert_eq!(touches.count(&bo, "s1"), 1);
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(touches.count(&ana, "s3"), 1);
    }
}
