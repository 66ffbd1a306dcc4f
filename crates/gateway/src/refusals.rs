//! The refusal limit: how many refusals one principal, or one source address, gets logged one by
//! one in a window (`[policy] refusal_limit` in `refusal_window_seconds`).
//!
//! Anyone with a token could append refused entries as fast as the log takes them (about 1,400 a
//! second was measured), filling the public log and its mirrors. Past the limit, a request that
//! would be refused is answered 429 with `Retry-After` and not logged one by one; when the window
//! ends, one summary entry records how many refusals it held (`refusals-limited`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use clover_model::{Origin, Principal, PrincipalId, PrincipalKind};

/// Whom a window counts: one principal, or one source address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Counted {
    /// A principal (by kind and id: a data subject whose id is an employee's is someone else),
    /// whatever their address.
    Principal(PrincipalKind, PrincipalId),
    /// A source address, whoever calls from it.
    Source(IpAddr),
}

/// One window of one principal's or address's refusals.
#[derive(Debug)]
struct Window {
    started: Instant,
    refusals: u32,
    /// Refusals answered 429 instead of being logged.
    limited: u32,
    /// The last caller counted, for the summary entry.
    last: (Principal, Origin, IpAddr),
}

/// A window that held refusals past the limit, to log as one summary entry.
#[derive(Debug)]
pub(crate) struct Summary {
    /// Whom it counted.
    pub(crate) counted: Counted,
    /// How many refusals were answered 429 rather than logged.
    pub(crate) limited: u32,
    /// The last caller it counted.
    pub(crate) principal: Principal,
    /// Where they called from.
    pub(crate) origin: Origin,
    /// Their address.
    pub(crate) address: IpAddr,
}

/// The windows of every principal and source address with refusals.
#[derive(Debug)]
pub(crate) struct Refusals {
    limit: u32,
    window: Duration,
    windows: Mutex<HashMap<Counted, Window>>,
}

impl Refusals {
    /// A limit of `limit` refusals per `window` (0: none).
    pub(crate) fn new(limit: u32, window: Duration) -> Self {
        Self { limit, window, windows: Mutex::new(HashMap::new()) }
    }

    /// Counts a refusal of `principal` from `origin` at `address`: `Ok` if it is to be logged,
    /// or how long until the caller's window ends if it is past the limit (then 429).
    pub(crate) fn count(&self, principal: &Principal, origin: &Origin, address: IpAddr) -> Result<(), Duration> {
        if self.limit == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let mut wait = None;
        for counted in [Counted::Principal(principal.kind, principal.id.clone()), Counted::Source(address)] {
            let window = windows.entry(counted).or_insert_with(|| Window {
                started: now,
                refusals: 0,
                limited: 0,
                last: (principal.clone(), origin.clone(), address),
            });
            if now.duration_since(window.started) >= self.window && window.limited == 0 {
                // A window that ended without going past the limit starts again.
                *window = Window {
                    started: now,
                    refusals: 0,
                    limited: 0,
                    last: (principal.clone(), origin.clone(), address),
                };
            }
            window.refusals = window.refusals.saturating_add(1);
            window.last = (principal.clone(), origin.clone(), address);
            if window.refusals > self.limit {
                let left = self.window.saturating_sub(now.duration_since(window.started));
                wait = Some(wait.map_or(left, |w: Duration| w.max(left)));
            }
        }
        match wait {
            None => Ok(()),
            Some(left) => {
                // Counted once, in each window past the limit.
                for counted in [Counted::Principal(principal.kind, principal.id.clone()), Counted::Source(address)] {
                    if let Some(window) = windows.get_mut(&counted)
                        && window.refusals > self.limit
                    {
                        window.limited = window.limited.saturating_add(1);
                    }
                }
                Err(left.max(Duration::from_secs(1)))
            }
        }
    }

    /// Takes the windows that have ended: those that held refusals past the limit come back, to
    /// be logged as one summary entry each.
    pub(crate) fn ended(&self) -> Vec<Summary> {
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let ended: Vec<Counted> = windows
            .iter()
            .filter(|(_, w)| now.duration_since(w.started) >= self.window)
            .map(|(k, _)| k.clone())
            .collect();
        ended
            .into_iter()
            .filter_map(|counted| {
                let window = windows.remove(&counted)?;
                let (principal, origin, address) = window.last;
                (window.limited > 0).then_some(Summary { counted, limited: window.limited, principal, origin, address })
            })
            .collect()
    }

    /// The window's length.
    pub(crate) fn window(&self) -> Duration {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ana() -> Principal {
        Principal {
            id: "ana".parse().unwrap(),
            kind: clover_model::PrincipalKind::Employee,
            home_region: "eu".parse().unwrap(),
            site: "dublin-1".parse().unwrap(),
            roles: Vec::new(),
        }
    }

    #[test]
    fn past_the_limit_refusals_wait_for_the_window_and_are_summed_up() {
        let refusals = Refusals::new(2, Duration::from_millis(300));
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        let ana = ana();
        assert!(refusals.count(&ana, &Origin::Unknown, a).is_ok());
        assert!(refusals.count(&ana, &Origin::Unknown, b).is_ok());
        // The principal's third, from another address: past the principal's limit.
        let wait = refusals.count(&ana, &Origin::Unknown, a).unwrap_err();
        assert!(wait >= Duration::from_secs(1), "Retry-After is at least a second");
        assert!(refusals.ended().is_empty(), "the window has not ended");
        std::thread::sleep(Duration::from_millis(350));
        let ended = refusals.ended();
        let principal: Vec<_> = ended.iter().filter(|s| matches!(s.counted, Counted::Principal(..))).collect();
        assert_eq!(principal.len(), 1);
        assert_eq!(principal[0].limited, 1);
        // A new window: logged one by one again.
        assert!(refusals.count(&ana, &Origin::Unknown, a).is_ok());
        // No limit at all with 0.
        let none = Refusals::new(0, Duration::from_secs(60));
        assert!((0..1000).all(|_| none.count(&ana, &Origin::Unknown, a).is_ok()));
    }
}
