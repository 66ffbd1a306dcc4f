//! How many distinct subjects each principal touched recently: bulk access needs an approval.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clover_model::PrincipalId;

/// Allowed reads per principal over a sliding window, in memory.
#[derive(Debug)]
pub struct Touches {
    window: Duration,
    seen: Mutex<HashMap<PrincipalId, VecDeque<(Instant, String)>>>,
}

impl Touches {
    /// A tracker over `window`.
    pub fn new(window: Duration) -> Self {
        Self { window, seen: Mutex::new(HashMap::new()) }
    }

    /// The distinct subjects `principal` touched in the window, `subject` included.
    pub fn count(&self, principal: &PrincipalId, subject: &str) -> i64 {
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(touches) = seen.get_mut(principal) else { return 1 };
        while touches.front().is_some_and(|(at, _)| at.elapsed() > self.window) {
            touches.pop_front();
        }
        let mut distinct: BTreeSet<&str> = touches.iter().map(|(_, s)| s.as_str()).collect();
        distinct.insert(subject);
        i64::try_from(distinct.len()).unwrap_or(i64::MAX)
    }

    /// Records that `principal` read `subject`'s data now.
    pub fn record(&self, principal: &PrincipalId, subject: String) {
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.entry(principal.clone()).or_default().push_back((Instant::now(), subject));
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
