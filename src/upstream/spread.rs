//! Spreading a route's requests over its upstream groups (`group_balance: round_robin`, with
//! `group_weights`), for provider pools: each request starts at the group the schedule names
//! and fails over to the others in their configured order. Without it a route's groups are
//! a failover chain: the first serves everything while it can.
//!
//! The schedule is nginx's smooth weighted round robin (weights 3:1 give `a a b a`, not
//! `a a a b`), computed once per config; each request takes the next slot with one atomic
//! add, and the group order for every starting group is built once too, so a request clones
//! one `Arc` and allocates nothing.

use super::UpstreamGroup;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A group order per request, by weighted round robin over the first group.
#[derive(Debug)]
pub struct Spread {
    /// Starting group index per slot.
    schedule: Vec<usize>,
    next: AtomicUsize,
    /// For each group index: that group first, then the others in configured order.
    orders: Vec<Arc<[Arc<UpstreamGroup>]>>,
}

impl Spread {
    /// Spread over `groups` with `weights` (one per group, each at least 1).
    pub fn new(groups: &[Arc<UpstreamGroup>], weights: &[u32]) -> Spread {
        let orders = (0..groups.len())
            .map(|first| {
                std::iter::once(groups[first].clone())
                    .chain(
                        groups
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| *i != first)
                            .map(|(_, g)| g.clone()),
                    )
                    .collect()
            })
            .collect();
        Spread {
            schedule: smooth_schedule(weights),
            next: AtomicUsize::new(0),
            orders,
        }
    }

    /// The group order of the next request.
    pub fn order(&self) -> Arc<[Arc<UpstreamGroup>]> {
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.schedule.len().max(1);
        self.orders[self.schedule.get(slot).copied().unwrap_or(0)].clone()
    }
}

/// The smooth weighted round-robin sequence of group indices, one period long (the sum of
/// the weights): each step adds every weight to its group's current value, picks the largest
/// and takes the total from it.
fn smooth_schedule(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|w| i64::from((*w).max(1))).sum();
    let mut current = vec![0i64; weights.len()];
    (0..total)
        .map(|_| {
            for (c, w) in current.iter_mut().zip(weights) {
                *c += i64::from((*w).max(1));
            }
            let (best, _) = current
                .iter()
                .enumerate()
                .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
                .expect("at least one group");
            current[best] -= total;
            best
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_smooth_and_follows_the_weights() {
        assert_eq!(smooth_schedule(&[1, 1]), [0, 1]);
        assert_eq!(smooth_schedule(&[3, 1]), [0, 0, 1, 0]);
        assert_eq!(smooth_schedule(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        let s = smooth_schedule(&[2, 3, 5]);
        assert_eq!(s.len(), 10);
        for (g, w) in [(0, 2), (1, 3), (2, 5)] {
            assert_eq!(s.iter().filter(|i| **i == g).count(), w);
        }
    }
}
