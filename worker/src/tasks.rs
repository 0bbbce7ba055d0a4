//! Background tasks keyed by what they work on, where a newer task for a key supersedes the
//! older one (a newer snapshot of a partition, a newer restore of it). Dropping the set aborts
//! every task, so nothing of an ended engine run goes on writing or restoring.

use std::{collections::HashMap, future::Future, hash::Hash};

use tokio::task::JoinHandle;

/// At most one running task per key.
pub struct LatestTasks<K> {
    tasks: HashMap<K, JoinHandle<()>>,
}

impl<K: Eq + Hash> LatestTasks<K> {
    /// No tasks.
    pub fn new() -> Self {
        Self {
            tasks: HashMap::new(),
        }
    }

    /// Spawns `task` for `key`, aborting the task it supersedes.
    pub fn replace(&mut self, key: K, task: impl Future<Output = ()> + Send + 'static) {
        self.cancel(&key);
        self.tasks.retain(|_, task| !task.is_finished());
        self.tasks.insert(key, tokio::spawn(task));
    }

    /// Aborts the task of `key`, if any.
    pub fn cancel(&mut self, key: &K) {
        if let Some(task) = self.tasks.remove(key) {
            task.abort();
        }
    }
}

impl<K: Eq + Hash> Default for LatestTasks<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K> Drop for LatestTasks<K> {
    fn drop(&mut self) {
        for task in self.tasks.values() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_newer_task_aborts_the_older_one_of_its_key_only() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (open, gate) = tokio::sync::watch::channel(false);
        let mut tasks = LatestTasks::new();
        for (key, name) in [(1, "old"), (2, "other"), (1, "new")] {
            let (tx, mut gate) = (tx.clone(), gate.clone());
            tasks.replace(key, async move {
                let _ = gate.wait_for(|&open| open).await;
                let _ = tx.send(name);
            });
        }
        open.send_replace(true);
        drop(tx);
        let mut done = Vec::new();
        while let Some(name) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
        {
            done.push(name);
        }
        done.sort_unstable();
        assert_eq!(done, vec!["new", "other"]);
        drop(tasks);
    }

    #[tokio::test]
    async fn dropping_the_set_aborts_its_tasks() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut tasks = LatestTasks::new();
        tasks.replace(0, async move {
            std::future::pending::<()>().await;
            let _ = tx.send(());
        });
        drop(tasks);
        let closed = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(closed.unwrap(), None, "the aborted task dropped its sender");
    }
}
