//! A run that starts over on a store holding results rebuilds them beside what readers see, and
//! switches its own in once they show at least as much (SPEC §7, continuity: readers never see an
//! empty or rewound store). How a store keeps the rebuild aside and switches it in is its own
//! (SQLite: tables under a prefix, renamed in one transaction; HBase: a local SQLite file, copied
//! in); when to switch is the same for every store, and decided here.

use std::time::{Duration, Instant};

use cartflow_dataflows::schema::{state_key, WriteBatch};

/// The old `pipeline_state`'s entry for how far a rebuild beside it has come.
pub const REBUILD_FRONTIER: &str = "rebuild_frontier";

/// How long a rebuild whose source is live may stay behind the old results before it switches in
/// anyway. Live, its frontier catches up within seconds (the steps from its last large one to the
/// live edge); one still behind after this came from other input (another topic, a reset one),
/// and waiting would show readers the old results for good.
pub const LIVE_GRACE: Duration = Duration::from_secs(60);

/// A rebuild beside the results readers see: how far those go, and how far the rebuild has come.
#[derive(Debug, Default)]
pub struct Rebuild {
    pub old_frontier: String,
    pub old_live_edge: Option<String>,
    frontier: Option<String>,
    live_edge: Option<String>,
    /// When the rebuild's live windows began (its source had read its backlog).
    live_since: Option<Instant>,
}

/// What a store does with its rebuild after a batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Keep rebuilding: readers keep the old results.
    Rebuild,
    /// Switch the rebuild in: readers see it from now on.
    SwitchIn(Why),
    /// Drop the rebuild (the run produced nothing): readers keep the old results.
    Drop,
}

/// Why a rebuild switches in.
#[derive(Debug, PartialEq, Eq)]
pub enum Why {
    /// It shows readers at least what they saw.
    CaughtUp,
    /// Live for longer than the grace and still behind: the old results came from other input.
    LiveBehind,
    /// A bounded run's last batch, behind the old results.
    EndedBehind,
}

impl Rebuild {
    pub fn new(old_frontier: String, old_live_edge: Option<String>) -> Rebuild {
        Rebuild { old_frontier, old_live_edge, ..Default::default() }
    }

    /// The rebuild shows readers at least what they see: its frontier has reached theirs, and its
    /// live windows reach as far as theirs did. (Fixed-width RFC 3339 times order as text.)
    fn caught_up(&self) -> bool {
        let Some(frontier) = &self.frontier else { return false };
        let windows_reach = self.live_edge.as_ref().unwrap_or(frontier);
        *frontier >= self.old_frontier && self.old_live_edge.as_ref().is_none_or(|old| windows_reach >= old)
    }

    /// Takes in the `pipeline_state` entries the rebuild has written.
    pub fn note(&mut self, state: &[(String, String)]) {
        for (key, value) in state {
            match key.as_str() {
                state_key::FRONTIER => self.frontier = Some(value.clone()),
                state_key::LIVE_EDGE => {
                    self.live_edge = Some(value.clone());
                    self.live_since.get_or_insert_with(Instant::now);
                }
                _ => {}
            }
        }
    }

    /// After `batch` is in the rebuild (and noted): switch it in once it has caught up, or earlier
    /// when it cannot (a bounded run's last batch, a live source still behind after `live_grace`);
    /// drop it when the run ends without results.
    pub fn next(&self, batch: &WriteBatch, live_grace: Duration) -> Next {
        if self.caught_up() {
            Next::SwitchIn(Why::CaughtUp)
        } else if self.live_since.is_some_and(|since| since.elapsed() >= live_grace) {
            Next::SwitchIn(Why::LiveBehind)
        } else if batch.complete && self.frontier.is_some() {
            Next::SwitchIn(Why::EndedBehind)
        } else if batch.complete {
            Next::Drop
        } else {
            Next::Rebuild
        }
    }
}

impl Next {
    /// Logs what the store did with a rebuild beside results as of `old`, once it is done.
    pub fn announce(&self, old: &str, live_grace: Duration) {
        match self {
            Next::SwitchIn(Why::CaughtUp) => {
                tracing::info!("the rebuilt store has caught up with the old one ({old}): readers now see it")
            }
            Next::SwitchIn(Why::LiveBehind) => tracing::warn!(
                "this run has been live for {} s but is behind the results the store held ({old}), which came from \
                 other input: readers now see its results",
                live_grace.as_secs()
            ),
            Next::SwitchIn(Why::EndedBehind) => tracing::warn!(
                "the run ended behind the results the store held ({old}): readers now see its results, as of an \
                 earlier frontier"
            ),
            Next::Drop => tracing::warn!("the run produced no results: the store keeps those it held ({old})"),
            Next::Rebuild => {}
        }
    }
}
