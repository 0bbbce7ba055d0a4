//! Sticky, balanced partition assignment (pure): which pod owns which partitions.
//!
//! Every partition gets exactly one owner, pod sizes differ by at most one, and as few
//! partitions as possible change owner relative to the previous assignment: a partition only
//! moves when its owner is gone or holds more than its new share.

use std::collections::{BTreeMap, BTreeSet};

/// Pod name → partitions it owns (sorted).
pub type Assignment = BTreeMap<String, Vec<i32>>;

/// Assigns partitions `0..partitions` to `pods`, keeping as much of `previous` as balance
/// allows. Pods are identified by name; a pod not in `pods` owns nothing afterwards.
pub fn assign(partitions: i32, pods: &[String], previous: &Assignment) -> Assignment {
    let pods: BTreeSet<&String> = pods.iter().collect();
    let mut result: Assignment = pods.iter().map(|p| ((*p).clone(), Vec::new())).collect();
    if pods.is_empty() || partitions <= 0 {
        return result;
    }

    // What each live pod held before, with every partition counted once and only if it
    // still exists.
    let mut claimed = BTreeSet::new();
    let mut held: BTreeMap<&String, Vec<i32>> = BTreeMap::new();
    for pod in &pods {
        let mut mine: Vec<i32> = previous
            .get(*pod)
            .into_iter()
            .flatten()
            .copied()
            .filter(|p| (0..partitions).contains(p) && claimed.insert(*p))
            .collect();
        mine.sort_unstable();
        held.insert(*pod, mine);
    }

    // The pods that held the most get the larger shares: that keeps the most in place.
    let count = pods.len();
    let base = partitions as usize / count;
    let extra = partitions as usize % count;
    let mut by_holdings: Vec<&String> = pods.iter().copied().collect();
    by_holdings.sort_by(|a, b| held[b].len().cmp(&held[a].len()).then(a.cmp(b)));
    let capacity: BTreeMap<&String, usize> = by_holdings
        .iter()
        .enumerate()
        .map(|(rank, pod)| (*pod, base + usize::from(rank < extra)))
        .collect();

    let mut kept = BTreeSet::new();
    for pod in &pods {
        let keep: Vec<i32> = held[*pod].iter().copied().take(capacity[*pod]).collect();
        kept.extend(keep.iter().copied());
        result.insert((*pod).clone(), keep);
    }
    let mut free = (0..partitions).filter(|p| !kept.contains(p));
    for pod in &pods {
        let owned = result.get_mut(*pod).expect("every live pod has an entry");
        while owned.len() < capacity[*pod] {
            match free.next() {
                Some(p) => owned.push(p),
                None => break,
            }
        }
        owned.sort_unstable();
    }
    result
}

/// Partition → the pod that owns it.
pub fn owners(assignment: &Assignment) -> BTreeMap<i32, &str> {
    assignment
        .iter()
        .flat_map(|(pod, held)| held.iter().map(move |p| (*p, pod.as_str())))
        .collect()
}

/// Partitions whose owner differs between two assignments (unowned counts as an owner).
pub fn moved(before: &Assignment, after: &Assignment) -> BTreeSet<i32> {
    let (b, a) = (owners(before), owners(after));
    b.keys()
        .chain(a.keys())
        .filter(|p| b.get(p) != a.get(p))
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn pods(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    fn sizes(a: &Assignment) -> Vec<usize> {
        a.values().map(Vec::len).collect()
    }

    #[test]
    fn first_assignment_is_balanced_and_contiguous() {
        let a = assign(8, &pods(&["a", "b", "c"]), &Assignment::new());
        assert_eq!(a["a"], vec![0, 1, 2]);
        assert_eq!(a["b"], vec![3, 4, 5]);
        assert_eq!(a["c"], vec![6, 7]);
    }

    #[test]
    fn scaling_two_to_four_moves_only_what_the_new_pods_take() {
        let two = assign(8, &pods(&["a", "b"]), &Assignment::new());
        let four = assign(8, &pods(&["a", "b", "c", "d"]), &two);
        assert_eq!(sizes(&four), vec![2, 2, 2, 2]);
        assert!(
            four["a"].iter().all(|p| two["a"].contains(p)),
            "a keeps its own: {four:?}"
        );
        assert!(
            four["b"].iter().all(|p| two["b"].contains(p)),
            "b keeps its own: {four:?}"
        );
        assert_eq!(moved(&two, &four).len(), 4);
    }

    #[test]
    fn a_replaced_pod_hands_exactly_its_partitions_to_the_replacement() {
        let before = assign(6, &pods(&["a", "b", "c"]), &Assignment::new());
        let after = assign(6, &pods(&["a", "b", "d"]), &before);
        assert_eq!(after["a"], before["a"]);
        assert_eq!(after["b"], before["b"]);
        assert_eq!(after["d"], before["c"]);
    }

    #[test]
    fn new_partitions_go_to_the_smallest_pods() {
        let before = assign(4, &pods(&["a", "b"]), &Assignment::new());
        let after = assign(6, &pods(&["a", "b"]), &before);
        assert_eq!(moved(&before, &after), BTreeSet::from([4, 5]));
        assert_eq!(sizes(&after), vec![3, 3]);
    }

    #[test]
    fn more_pods_than_partitions_leaves_some_idle() {
        let a = assign(2, &pods(&["a", "b", "c"]), &Assignment::new());
        assert_eq!(sizes(&a).iter().sum::<usize>(), 2);
        assert_eq!(a.len(), 3);
    }

    #[test]
    fn no_pods_means_no_owners() {
        assert!(assign(4, &[], &Assignment::new()).is_empty());
    }

    /// The fewest moves any balanced assignment can make: partitions not kept, where each
    /// pod keeps at most its share and the largest shares go to the largest holders.
    fn lower_bound_of_moves(partitions: i32, live: &[String], previous: &Assignment) -> usize {
        let mut seen = BTreeSet::new();
        let mut holdings: Vec<usize> = live
            .iter()
            .map(|pod| {
                previous
                    .get(pod)
                    .into_iter()
                    .flatten()
                    .filter(|p| (0..partitions).contains(*p) && seen.insert(**p))
                    .count()
            })
            .collect();
        holdings.sort_unstable_by(|a, b| b.cmp(a));
        let (base, extra) = (
            partitions as usize / live.len(),
            partitions as usize % live.len(),
        );
        let kept: usize = holdings
            .iter()
            .enumerate()
            .map(|(i, h)| (*h).min(base + usize::from(i < extra)))
            .sum();
        partitions as usize - kept
    }

    proptest! {
        #[test]
        fn every_partition_has_one_owner_sizes_within_one_and_moves_minimal(
            partitions in 1i32..64,
            before in 1usize..12,
            after in 1usize..12,
            shift in 0usize..6,
        ) {
            let old_pods: Vec<String> = (0..before).map(|i| format!("pod-{i}")).collect();
            // Some pods survive, some are new (a shifted window of names).
            let new_pods: Vec<String> = (shift..shift + after).map(|i| format!("pod-{i}")).collect();
            let previous = assign(partitions, &old_pods, &Assignment::new());
            let next = assign(partitions, &new_pods, &previous);

            let mut owned: Vec<i32> = next.values().flatten().copied().collect();
            owned.sort_unstable();
            prop_assert_eq!(owned, (0..partitions).collect::<Vec<_>>());
            let s = sizes(&next);
            prop_assert!(s.iter().max().unwrap() - s.iter().min().unwrap() <= 1, "{:?}", next);
            prop_assert!(next.keys().all(|p| new_pods.contains(p)));

            let moves = moved(&previous, &next).len();
            prop_assert_eq!(moves, lower_bound_of_moves(partitions, &new_pods, &previous));
        }
    }
}
