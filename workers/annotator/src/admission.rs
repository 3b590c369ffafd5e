//! Who gets in: requests admitted at once, shared fairly between callers. Every request counts
//! from before its body is read until its answer, so with the body and pixel limits this bounds
//! the memory requests take. A caller alone may use every slot; when others come, each gets its
//! share of the slots even over the bound (at most twice it in all), and a caller at or over its
//! share is refused (429) until the total is back under the bound. So a busy camera cannot lock
//! the quiet ones out, and the refusals go to it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::batcher::Caller;

/// Whether a request of a caller with `mine` in flight may enter, with `total` in flight from
/// `callers` callers (this one included) and `max` the bound.
pub fn may_enter(mine: usize, callers: usize, total: usize, max: usize) -> bool {
    let max = max.max(1);
    let share = (max / callers.max(1)).max(1);
    if mine < share {
        total < 2 * max
    } else {
        total < max
    }
}

#[derive(Debug, Default)]
struct InFlight {
    by_caller: HashMap<Caller, usize>,
    total: usize,
}

/// The requests in flight, by caller.
#[derive(Debug)]
pub struct Admission {
    max: usize,
    in_flight: Mutex<InFlight>,
}

/// A request let in; it leaves when dropped (answered, or its client gone).
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    caller: Caller,
}

impl Admission {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            in_flight: Mutex::default(),
        })
    }

    /// Lets a request of `caller` in, or `None` (answer 429).
    pub fn admit(self: &Arc<Self>, caller: &Caller) -> Option<Admitted> {
        // The counts are whole between statements: a panic elsewhere leaves nothing half-done.
        let mut in_flight = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = in_flight.by_caller.get(caller).copied().unwrap_or(0);
        let callers = in_flight.by_caller.len() + usize::from(mine == 0);
        if !may_enter(mine, callers, in_flight.total, self.max) {
            return None;
        }
        *in_flight.by_caller.entry(caller.clone()).or_insert(0) += 1;
        in_flight.total += 1;
        Some(Admitted {
            admission: self.clone(),
            caller: caller.clone(),
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut in_flight = self
            .admission
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        in_flight.total -= 1;
        if let Some(n) = in_flight.by_caller.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                in_flight.by_caller.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(name: &str) -> Caller {
        Arc::from(name)
    }

    #[test]
    fn a_caller_alone_may_use_every_slot_and_no_more() {
        let admission = Admission::new(4);
        let held: Vec<_> = (0..4).map(|_| admission.admit(&caller("a")).unwrap()).collect();
        assert!(admission.admit(&caller("a")).is_none());
        drop(held);
        assert!(admission.admit(&caller("a")).is_some());
    }

    #[test]
    fn a_quiet_caller_gets_in_while_a_busy_one_holds_every_slot_and_the_busy_one_is_refused() {
        let admission = Admission::new(4);
        let busy: Vec<_> = (0..4)
            .map(|_| admission.admit(&caller("busy")).unwrap())
            .collect();
        // Two callers: a share of 2 each. The quiet one gets its two over the bound.
        let quiet: Vec<_> = (0..2)
            .map(|_| admission.admit(&caller("quiet")).unwrap())
            .collect();
        assert!(
            admission.admit(&caller("quiet")).is_none(),
            "over its share and the bound"
        );
        assert!(admission.admit(&caller("busy")).is_none());
        // The busy one gets back in only once the total is under the bound.
        let mut busy = busy;
        busy.truncate(2);
        assert!(
            admission.admit(&caller("busy")).is_none(),
            "4 in flight, the bound"
        );
        busy.truncate(1);
        assert!(admission.admit(&caller("busy")).is_some());
        drop(quiet);
    }

    #[test]
    fn never_more_than_twice_the_bound_in_flight() {
        let admission = Admission::new(4);
        let mut held = Vec::new();
        for i in 0..100 {
            if let Some(a) = admission.admit(&caller(&format!("camera-{i}"))) {
                held.push(a);
            }
        }
        assert_eq!(held.len(), 8);
    }

    #[test]
    fn the_decision_in_numbers() {
        // mine, callers, total, max
        assert!(may_enter(0, 1, 0, 40));
        assert!(may_enter(39, 1, 39, 40));
        assert!(!may_enter(40, 1, 40, 40));
        assert!(
            may_enter(0, 2, 40, 40),
            "a newcomer under its share, over the bound"
        );
        assert!(!may_enter(20, 2, 40, 40), "at its share and at the bound");
        assert!(may_enter(20, 2, 39, 40), "at its share, under the bound");
        assert!(!may_enter(0, 2, 80, 40), "never past twice the bound");
        assert!(may_enter(0, 100, 40, 40), "a share of at least one");
    }
}
