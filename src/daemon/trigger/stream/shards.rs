//! The shard set: which shards to read, from where, and in which order
//! (a child shard waits until its parent is read to the end).

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_dynamodbstreams::types::ShardIteratorType;

/// Where a new shard iterator starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartAt {
    /// Only records written from now on (open shards at start-up).
    Latest,
    /// Every record still held (shards that appear later: children).
    TrimHorizon,
}

impl StartAt {
    pub(crate) fn iterator_type(self) -> ShardIteratorType {
        match self {
            StartAt::Latest => ShardIteratorType::Latest,
            StartAt::TrimHorizon => ShardIteratorType::TrimHorizon,
        }
    }
}

/// One shard as DescribeStream lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListedShard {
    pub id: String,
    pub parent: Option<String>,
    /// Has an EndingSequenceNumber: no new records will be added.
    pub closed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShardState {
    Waiting(StartAt),
    Reading,
    Finished,
}

#[derive(Debug)]
pub(crate) struct TrackedShard {
    pub(crate) parent: Option<String>,
    pub(crate) state: ShardState,
}

/// The shards of the stream and which of them may be read, so that a child
/// is read only after its parent (records of one key stay in order).
#[derive(Debug, Default)]
pub(crate) struct ShardSet {
    pub(crate) shards: BTreeMap<String, TrackedShard>,
}

impl ShardSet {
    /// The shards at start-up: open ones start at LATEST, closed ones hold
    /// only the past that the initial full reconcile covers.
    pub(crate) fn initial(listed: &[ListedShard]) -> Self {
        let shards = listed
            .iter()
            .map(|s| {
                let state = if s.closed {
                    ShardState::Finished
                } else {
                    ShardState::Waiting(StartAt::Latest)
                };
                let tracked = TrackedShard {
                    parent: s.parent.clone(),
                    state,
                };
                (s.id.clone(), tracked)
            })
            .collect();
        Self { shards }
    }

    /// Merges a complete listing: new shards start at TRIM_HORIZON; a shard
    /// no longer listed is forgotten. Returns the shards being read that
    /// are gone (their readers must stop).
    pub(crate) fn update(&mut self, listed: &[ListedShard]) -> Vec<String> {
        let listed_ids: BTreeSet<&str> = listed.iter().map(|s| s.id.as_str()).collect();
        let mut gone = Vec::new();
        self.shards.retain(|id, shard| {
            let keep = listed_ids.contains(id.as_str());
            if !keep && shard.state == ShardState::Reading {
                gone.push(id.clone());
            }
            keep
        });
        for s in listed {
            self.shards
                .entry(s.id.clone())
                .or_insert_with(|| TrackedShard {
                    parent: s.parent.clone(),
                    state: ShardState::Waiting(StartAt::TrimHorizon),
                });
        }
        gone
    }

    /// Shards that may start now, in shard-id order: LATEST ones at once,
    /// TRIM_HORIZON ones when their parent is finished or no longer listed.
    pub(crate) fn ready(&self) -> Vec<(String, StartAt)> {
        self.shards
            .iter()
            .filter_map(|(id, shard)| match shard.state {
                ShardState::Waiting(StartAt::Latest) => Some((id.clone(), StartAt::Latest)),
                ShardState::Waiting(StartAt::TrimHorizon) if self.parent_done(shard) => {
                    Some((id.clone(), StartAt::TrimHorizon))
                }
                _ => None,
            })
            .collect()
    }

    pub(crate) fn parent_done(&self, shard: &TrackedShard) -> bool {
        match shard.parent.as_deref().and_then(|p| self.shards.get(p)) {
            None => true,
            Some(parent) => parent.state == ShardState::Finished,
        }
    }

    pub(crate) fn mark_reading(&mut self, id: &str) {
        if let Some(shard) = self.shards.get_mut(id) {
            shard.state = ShardState::Reading;
        }
    }

    /// The shard's reader saw its end (NextShardIterator null).
    pub(crate) fn finish(&mut self, id: &str) {
        if let Some(shard) = self.shards.get_mut(id) {
            shard.state = ShardState::Finished;
        }
    }

    /// Open shards (LATEST start) at start-up.
    pub(crate) fn latest_ids(&self) -> Vec<String> {
        self.shards
            .iter()
            .filter(|(_, s)| s.state == ShardState::Waiting(StartAt::Latest))
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, parent: Option<&str>, closed: bool) -> ListedShard {
        ListedShard {
            id: id.to_owned(),
            parent: parent.map(str::to_owned),
            closed,
        }
    }

    #[test]
    fn startup_reads_open_shards_from_latest_and_skips_closed_ones() {
        let set = ShardSet::initial(&[
            shard("s0", None, true),
            shard("s1", Some("s0"), false),
            shard("s2", Some("s0"), false),
        ]);
        assert_eq!(
            set.ready(),
            vec![
                ("s1".to_owned(), StartAt::Latest),
                ("s2".to_owned(), StartAt::Latest)
            ]
        );
    }

    #[test]
    fn child_waits_for_its_parent_to_finish() {
        let mut set = ShardSet::initial(&[shard("p", None, false)]);
        set.mark_reading("p");
        assert!(set.ready().is_empty());
        // The parent splits: it closes, a child appears.
        let gone = set.update(&[shard("p", None, true), shard("c", Some("p"), false)]);
        assert!(gone.is_empty());
        assert!(
            set.ready().is_empty(),
            "child must wait while the parent is read"
        );
        set.finish("p");
        assert_eq!(set.ready(), vec![("c".to_owned(), StartAt::TrimHorizon)]);
        set.mark_reading("c");
        assert!(set.ready().is_empty());
        // A grandchild waits for the child in turn.
        set.update(&[
            shard("p", None, true),
            shard("c", Some("p"), true),
            shard("g", Some("c"), false),
        ]);
        assert!(set.ready().is_empty());
        set.finish("c");
        assert_eq!(set.ready(), vec![("g".to_owned(), StartAt::TrimHorizon)]);
    }

    #[test]
    fn child_of_an_unlisted_parent_starts_and_unlisted_readers_stop() {
        let mut set = ShardSet::initial(&[shard("p", None, false)]);
        set.mark_reading("p");
        // The parent was trimmed away before we saw it end.
        let gone = set.update(&[shard("c", Some("p"), false)]);
        assert_eq!(gone, vec!["p".to_owned()]);
        assert_eq!(set.ready(), vec![("c".to_owned(), StartAt::TrimHorizon)]);
        // A shard whose parent was never known starts at once too.
        set.mark_reading("c");
        set.update(&[shard("c", Some("p"), false), shard("x", Some("zz"), false)]);
        assert_eq!(set.ready(), vec![("x".to_owned(), StartAt::TrimHorizon)]);
    }

    #[test]
    fn a_merged_child_waits_for_the_parent_it_names() {
        // New shards listed in one description: parent and child both new.
        let mut set = ShardSet::default();
        set.update(&[shard("a", None, true), shard("b", Some("a"), false)]);
        assert_eq!(set.ready(), vec![("a".to_owned(), StartAt::TrimHorizon)]);
        set.mark_reading("a");
        set.finish("a");
        assert_eq!(set.ready(), vec![("b".to_owned(), StartAt::TrimHorizon)]);
    }
}
