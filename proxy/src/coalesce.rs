//! Single flight for values made by async work: concurrent callers for one key share the first
//! caller's work instead of repeating it (a verdict's evidence, a signature blob). If that caller
//! fails or goes away, the next waiter does the work; once done, the key is forgotten, so the
//! next caller after that finds the result where the work left it (a cache, the store).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::OnceCell;

pub struct Coalesce<K, V> {
    running: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K: Hash + Eq + Clone, V: Clone> Default for Coalesce<K, V> {
    fn default() -> Self {
        Coalesce {
            running: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Coalesce<K, V> {
    /// `work`'s value for `key`, done once for every caller that asks while it runs.
    pub async fn run<E, F, Fut>(&self, key: K, work: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let cell = Arc::clone(self.lock().entry(key.clone()).or_default());
        // Leaves the map however this call ends, a dropped (cancelled) request included: keys
        // come from clients, and an entry left behind would stay for good.
        let ours = Leave {
            owner: self,
            key,
            cell,
        };
        ours.cell.get_or_try_init(work).await.cloned()
    }

    /// How many keys are being worked on (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // A panic elsewhere while the map is held leaves it consistent (every change is one call).
    fn lock(&self) -> MutexGuard<'_, HashMap<K, Arc<OnceCell<V>>>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Leave<'a, K: Hash + Eq + Clone, V: Clone> {
    owner: &'a Coalesce<K, V>,
    key: K,
    cell: Arc<OnceCell<V>>,
}

impl<K: Hash + Eq + Clone, V: Clone> Drop for Leave<'_, K, V> {
    fn drop(&mut self) {
        let mut running = self.owner.lock();
        let ours = running
            .get(&self.key)
            .is_some_and(|c| Arc::ptr_eq(c, &self.cell));
        // Done: later callers find the value where the work left it. Not done (failed, or
        // cancelled): the entry stays only for callers still waiting on it (the map's reference
        // and ours are the two others), one of whom does the work next and then removes it.
        if ours && (self.cell.initialized() || Arc::strong_count(&self.cell) <= 2) {
            running.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let c: Arc<Coalesce<&str, u32>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let calls = (0..20).map(|_| {
            let (c, runs) = (Arc::clone(&c), Arc::clone(&runs));
            tokio::spawn(async move {
                c.run("k", || async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    Ok::<_, ()>(7)
                })
                .await
            })
        });
        for call in futures_util::future::join_all(calls).await {
            assert_eq!(call.unwrap(), Ok(7));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(c.is_empty());
    }

    #[tokio::test]
    async fn a_cancelled_caller_leaves_nothing_behind() {
        let c: Coalesce<u32, u32> = Coalesce::default();
        for key in 0..100 {
            let never = c.run(key, std::future::pending::<Result<u32, ()>>);
            let _ = tokio::time::timeout(std::time::Duration::from_millis(1), never).await;
        }
        assert!(c.is_empty(), "{} keys left behind", c.len());
    }

    #[tokio::test]
    async fn a_failure_is_not_shared_with_the_next_caller() {
        let c: Coalesce<&str, u32> = Coalesce::default();
        assert_eq!(
            c.run("k", || async { Err::<u32, _>("down") }).await,
            Err("down")
        );
        assert_eq!(c.run("k", || async { Ok::<_, &str>(1) }).await, Ok(1));
    }
}
