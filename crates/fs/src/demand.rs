//! On-demand reads first. A container blocked on a read must never wait
//! behind prefetch or background fetch for the link: every on-demand fetch
//! (of any layer: they share the link) registers here, prefetch pauses
//! between its requests while one is in flight, and background fetch also
//! waits until on-demand traffic has been quiet for a while — it starts
//! only when the workload stops reading, and yields as soon as it reads
//! again.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Shared by every layer of one daemon (one link).
#[derive(Debug, Default)]
pub struct DemandGate {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    in_flight: usize,
    last_done: Option<Instant>,
}

/// An on-demand fetch in flight; dropping it ends it.
#[derive(Debug)]
pub struct Demand<'a> {
    gate: &'a DemandGate,
}

impl Drop for Demand<'_> {
    fn drop(&mut self) {
        let mut st = self.gate.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
        st.last_done = Some(Instant::now());
        drop(st);
        self.gate.changed.notify_all();
    }
}

/// How long [`DemandGate::wait_for_turn`] sleeps at most between checks of
/// its `stop` condition.
const POLL: Duration = Duration::from_millis(50);

impl DemandGate {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers an on-demand fetch for as long as the guard lives.
    pub fn demand(&self) -> Demand<'_> {
        self.lock().in_flight += 1;
        Demand { gate: self }
    }

    /// Counts as on-demand activity now (a mount: reads are about to come).
    pub fn touch(&self) {
        self.lock().last_done = Some(Instant::now());
        self.changed.notify_all();
    }

    /// On-demand fetches in flight now.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// Blocks while on-demand fetches are in flight, then (when `quiet` is
    /// not zero) until none has ended within `quiet`. Returns early, false,
    /// when `stop()` turns true; true when it is this caller's turn. Never
    /// waits longer than `max` in all (a pass must not starve for ever: the
    /// layer's check depends on it).
    pub fn wait_for_turn(&self, quiet: Duration, max: Duration, stop: impl Fn() -> bool) -> bool {
        let give_up = Instant::now() + max;
        let mut st = self.lock();
        loop {
            if stop() {
                return false;
            }
            let now = Instant::now();
            if now >= give_up {
                return true;
            }
            let wait = if st.in_flight > 0 {
                POLL
            } else {
                match st.last_done {
                    Some(t) if !quiet.is_zero() && now.duration_since(t) < quiet => {
                        (quiet - now.duration_since(t)).min(POLL)
                    }
                    _ => return true,
                }
            };
            let wait = wait.min(give_up - now);
            st = self
                .changed
                .wait_timeout(st, wait)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_pass_waits_for_reads_and_quiet() {
        let gate = Arc::new(DemandGate::default());
        // Nothing ever read: go at once.
        let t = Instant::now();
        assert!(gate.wait_for_turn(Duration::from_secs(5), Duration::from_secs(60), || false));
        assert!(t.elapsed() < Duration::from_secs(1));

        // A read in flight holds prefetch (quiet 0) until it ends.
        let g2 = Arc::clone(&gate);
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let d = g2.demand();
            tx.send(()).ok();
            std::thread::sleep(Duration::from_millis(300));
            drop(d);
        });
        rx.recv().ok();
        let t = Instant::now();
        assert!(gate.wait_for_turn(Duration::ZERO, Duration::from_secs(60), || false));
        let waited = t.elapsed();
        reader.join().ok();
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        assert_eq!(gate.in_flight(), 0);

        // Background (quiet 400 ms) waits that long after the last read.
        let t = Instant::now();
        drop(gate.demand());
        assert!(
            gate.wait_for_turn(Duration::from_millis(400), Duration::from_secs(60), || {
                false
            })
        );
        assert!(
            t.elapsed() >= Duration::from_millis(390),
            "{:?}",
            t.elapsed()
        );

        // Bounded: reads that never stop do not starve it beyond `max`.
        let _busy = gate.demand();
        let t = Instant::now();
        assert!(gate.wait_for_turn(Duration::ZERO, Duration::from_millis(300), || false));
        assert!(t.elapsed() < Duration::from_secs(5));
        // And `stop` ends the wait.
        assert!(!gate.wait_for_turn(Duration::ZERO, Duration::from_secs(60), || true));
    }
}
