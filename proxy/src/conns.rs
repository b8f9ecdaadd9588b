//! Connection admission: at most `max_connections` client connections, and at most
//! `max_connections_per_peer` from one address, so that one client (or a slowloris) cannot hold
//! every descriptor. A connection holds its [`Admitted`] for its whole life.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

#[derive(Default)]
struct Counts {
    total: usize,
    by_peer: HashMap<IpAddr, usize>,
}

/// The open connections, counted.
#[derive(Clone)]
pub struct Connections {
    counts: Arc<Mutex<Counts>>,
    max: usize,
    per_peer: usize,
}

/// One admitted connection; dropping it frees its place.
pub struct Admitted {
    counts: Arc<Mutex<Counts>>,
    peer: IpAddr,
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Full,
    PeerFull,
}

impl Connections {
    pub fn new(max: usize, per_peer: usize) -> Connections {
        Connections {
            counts: Arc::default(),
            max,
            per_peer,
        }
    }

    /// A place for a connection from `peer`, if there is one.
    pub fn admit(&self, peer: IpAddr) -> Result<Admitted, Refused> {
        let mut c = lock(&self.counts);
        if c.total >= self.max {
            return Err(Refused::Full);
        }
        let n = c.by_peer.entry(peer).or_default();
        if *n >= self.per_peer {
            return Err(Refused::PeerFull);
        }
        *n += 1;
        c.total += 1;
        Ok(Admitted {
            counts: Arc::clone(&self.counts),
            peer,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut c = lock(&self.counts);
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_peer.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.by_peer.remove(&self.peer);
            }
        }
    }
}

// Every change to the counts is one statement: a poisoned lock still holds consistent counts.
fn lock(m: &Mutex<Counts>) -> MutexGuard<'_, Counts> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_in_total_and_per_peer_and_frees_on_drop() {
        let c = Connections::new(3, 2);
        let a: IpAddr = [127, 0, 0, 2].into();
        let b: IpAddr = [127, 0, 0, 3].into();
        let a1 = c.admit(a).unwrap();
        let _a2 = c.admit(a).unwrap();
        assert_eq!(c.admit(a).err(), Some(Refused::PeerFull));
        let _b1 = c.admit(b).unwrap();
        assert_eq!(c.admit(b).err(), Some(Refused::Full));
        drop(a1);
        assert!(c.admit(b).is_ok());
    }
}
