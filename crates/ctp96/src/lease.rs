//! Lease bookkeeping: the server's table of sessions (limit, expiry,
//! renewal, revocation) and when a client renews.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

/// One session as the server keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSession {
    pub id: u64,
    pub lease_id: String,
    pub expires: Instant,
    /// Wall-clock expiry, for `expires_at`.
    pub expires_wall: SystemTime,
    pub client: String,
    pub uor_id: Option<String>,
}

/// Why a session cannot be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("at the session limit ({limit}); retry after {retry_after:?}")]
    Limit { limit: usize, retry_after: Duration },
}

/// The server's sessions. Not thread-safe by itself: the server holds it
/// under a lock; every call is O(1) but [`SessionTable::purge`].
#[derive(Debug)]
pub struct SessionTable {
    sessions: HashMap<u64, ServerSession>,
    max: usize,
    lease: Duration,
}

impl SessionTable {
    /// At most `max` sessions (at least 1), each leased for `lease`.
    pub fn new(max: usize, lease: Duration) -> Self {
        SessionTable {
            sessions: HashMap::new(),
            max: max.max(1),
            lease: lease.max(Duration::from_secs(1)),
        }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Live sessions (expired ones not yet purged included).
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Drops expired sessions; returns how many.
    pub fn purge(&mut self, now: Instant) -> usize {
        let before = self.sessions.len();
        self.sessions.retain(|_, s| s.expires > now);
        before - self.sessions.len()
    }

    /// Opens a session with the ids given (random, chosen by the caller;
    /// an id in use is an error the caller retries with another).
    pub fn open(
        &mut self,
        id: u64,
        lease_id: String,
        client: String,
        uor_id: Option<String>,
        now: Instant,
    ) -> Result<Option<ServerSession>, OpenError> {
        self.purge(now);
        if self.sessions.len() >= self.max {
            // The earliest a slot frees up on its own.
            let retry_after = self
                .sessions
                .values()
                .map(|s| s.expires.saturating_duration_since(now))
                .min()
                .unwrap_or(Duration::from_secs(1))
                .clamp(Duration::from_millis(100), Duration::from_secs(5));
            return Err(OpenError::Limit {
                limit: self.max,
                retry_after,
            });
        }
        if id == 0 || self.sessions.contains_key(&id) {
            return Ok(None);
        }
        let s = ServerSession {
            id,
            lease_id,
            expires: now + self.lease,
            expires_wall: SystemTime::now() + self.lease,
            client,
            uor_id,
        };
        self.sessions.insert(id, s.clone());
        Ok(Some(s))
    }

    /// The live session `id`.
    pub fn get(&self, id: u64, now: Instant) -> Option<&ServerSession> {
        self.sessions.get(&id).filter(|s| s.expires > now)
    }

    /// Extends the lease of live session `id` to `now + lease`.
    pub fn renew(&mut self, id: u64, now: Instant) -> Option<ServerSession> {
        let lease = self.lease;
        let s = self.sessions.get_mut(&id).filter(|s| s.expires > now)?;
        s.expires = now + lease;
        s.expires_wall = SystemTime::now() + lease;
        Some(s.clone())
    }

    /// Revokes session `id`; false when there was none.
    pub fn revoke(&mut self, id: u64) -> bool {
        self.sessions.remove(&id).is_some()
    }
}

/// When a client renews a lease of `lease` it got at `granted`: at two
/// thirds of its length, and at least 2 s before it ends (leases shorter
/// than 3 s are renewed at half their length).
pub fn renew_at(granted: Instant, lease: Duration) -> Instant {
    let two_thirds = lease * 2 / 3;
    let margin_bound = lease.saturating_sub(Duration::from_secs(2));
    let at = if lease < Duration::from_secs(3) {
        lease / 2
    } else {
        two_thirds.min(margin_bound)
    };
    granted + at
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn limit_expiry_renewal_revocation() {
        let t0 = Instant::now();
        let mut t = SessionTable::new(2, Duration::from_secs(10));
        let a = t
            .open(1, "l1".into(), "c".into(), None, t0)
            .unwrap()
            .unwrap();
        assert_eq!(a.expires, t0 + Duration::from_secs(10));
        assert!(
            t.open(1, "dup".into(), "c".into(), None, t0)
                .unwrap()
                .is_none(),
            "ids are unique"
        );
        t.open(2, "l2".into(), "c".into(), None, t0)
            .unwrap()
            .unwrap();
        let e = t.open(3, "l3".into(), "c".into(), None, t0).unwrap_err();
        let OpenError::Limit { limit, retry_after } = e;
        assert_eq!(limit, 2);
        assert_eq!(retry_after, Duration::from_secs(5), "clamped to 5 s");
        // renewal at t0+8 extends session 1 to t0+18; session 2 expires at t0+10
        let r = t.renew(1, t0 + Duration::from_secs(8)).unwrap();
        assert_eq!(r.expires, t0 + Duration::from_secs(18));
        let later = t0 + Duration::from_secs(11);
        assert!(t.get(2, later).is_none(), "expired");
        assert!(
            t.renew(2, later).is_none(),
            "an expired lease cannot be renewed"
        );
        assert!(
            t.open(3, "l3".into(), "c".into(), None, later)
                .unwrap()
                .is_some(),
            "the expired one freed its slot"
        );
        assert!(t.revoke(1));
        assert!(!t.revoke(1));
        assert!(t.get(1, later).is_none());
    }

    #[test]
    fn renewal_comes_before_expiry() {
        let g = Instant::now();
        for secs in [1u64, 2, 3, 5, 30, 300, 3600] {
            let lease = Duration::from_secs(secs);
            let at = renew_at(g, lease);
            assert!(at > g && at < g + lease, "{secs}");
        }
        assert_eq!(
            renew_at(g, Duration::from_secs(300)),
            g + Duration::from_secs(200)
        );
        assert_eq!(
            renew_at(g, Duration::from_secs(4)),
            g + Duration::from_secs(2)
        );
    }
}
