//! A run of several processes with `--checkpoint-dir`: before the run, its processes agree on the
//! checkpoint they continue from, all the same one or none, in a short timely computation of their
//! own on the run's addresses (the run's own starts once it has ended; a process connecting early
//! retries, as at any start).
//!
//! Each process other than 0 tells process 0 which checkpoints it holds its files of, intact (see
//! [`checkpoint::held_shares`]); process 0 chooses the newest it can continue from that every
//! process holds, with the manifest's list of each process's files (see
//! `engine::checkpoints_of`), and tells every process.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use cartflow_dataflows::model::Timestamp;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::vec::{Broadcast, Input as _};
use timely::dataflow::operators::{Exchange, Operator, Probe};

use super::checkpoint::{self, FileEntry, Manifest};

/// The checkpoints a process holds its files of: each one's directory name, and its files.
pub type Held = Vec<(String, Vec<FileEntry>)>;

/// What the processes agreed to continue from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Decision {
    /// The checkpoint's directory name (the same in every process's `--checkpoint-dir`).
    pub name: String,
    pub manifest: Manifest,
    /// The store's frontier and live edge (process 0 reads them).
    pub store_frontier: Timestamp,
    pub store_live_edge: Option<Timestamp>,
}

/// Process 0's choice, from what every other process holds (by process).
pub type Decide = Box<dyn FnOnce(&BTreeMap<usize, Held>) -> Result<Option<Decision>> + Send>;

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Message {
    Holds {
        process: usize,
        held: Held,
    },
    /// The decision as JSON text (timely's bincode cannot carry the manifest's `serde_json::Value`).
    Decision(Result<String, String>),
}

/// Runs the agreement: every process gives what it holds (`held`, ignored in process 0), process 0
/// its choice (`decide`); every process gets the decision.
pub fn agree(
    cluster: timely::Config,
    process: usize,
    workers: usize,
    held: Held,
    decide: Option<Decide>,
) -> Result<Option<Decision>> {
    let held = Arc::new(held);
    let decide = Arc::new(Mutex::new(decide));
    let guards = timely::execute(cluster, move |worker| {
        let index = worker.index();
        let holds: Rc<RefCell<BTreeMap<usize, Held>>> = Rc::default();
        let decision: Rc<RefCell<Option<Result<String, String>>>> = Rc::default();
        let (received, decided) = (holds.clone(), decision.clone());
        let (mut holds_in, mut decision_in, holds_probe, decision_probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (holds_in, holds) = scope.new_input::<Message>();
            let (decision_in, decisions) = scope.new_input::<Message>();
            let holds = holds.exchange(|_| 0).unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
                Pipeline,
                "Holds",
                move |_, _| {
                    move |input, _output| {
                        input.for_each(|_, data| {
                            for message in data.drain(..) {
                                if let Message::Holds { process, held } = message {
                                    received.borrow_mut().insert(process, held);
                                }
                            }
                        });
                    }
                },
            );
            let decisions = decisions.broadcast().unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
                Pipeline,
                "Decision",
                move |_, _| {
                    move |input, _output| {
                        input.for_each(|_, data| {
                            for message in data.drain(..) {
                                if let Message::Decision(decision) = message {
                                    *decided.borrow_mut() = Some(decision);
                                }
                            }
                        });
                    }
                },
            );
            (holds_in, decision_in, holds.probe().0, decisions.probe().0)
        });
        if process != 0 && index == process * workers {
            holds_in.send(Message::Holds { process, held: (*held).clone() });
        }
        drop(holds_in);
        if index == 0 {
            while !holds_probe.done() {
                worker.step_or_park(Some(Duration::from_millis(1)));
            }
            let decide = decide.lock().unwrap().take().expect("process 0 decides");
            let decision = decide(&holds.borrow())
                .and_then(|decision| Ok(serde_json::to_string(&decision)?))
                .map_err(|e| format!("{e:#}"));
            decision_in.send(Message::Decision(decision));
        }
        drop(decision_in);
        while !decision_probe.done() {
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
        let decision = decision.borrow_mut().take().unwrap_or_else(|| Err("process 0 decided nothing".to_string()))?;
        serde_json::from_str::<Option<Decision>>(&decision).map_err(|e| format!("the decision does not read back: {e}"))
    })
    .map_err(anyhow::Error::msg)?;
    let mut decisions = guards.join().into_iter();
    let first = decisions.next().expect("a process has a worker").map_err(anyhow::Error::msg)?;
    first.map_err(|e| anyhow::anyhow!("process 0 could not choose a checkpoint: {e}"))
}

/// Why process `process` cannot continue from the checkpoint `name` (whose manifest lists
/// `files`, every process's), if it cannot: it does not hold its files of it as listed.
pub fn not_held(
    held: &BTreeMap<usize, Held>,
    processes: usize,
    workers: usize,
    name: &str,
    files: &[FileEntry],
) -> Option<String> {
    for process in 1..processes {
        let expected: Vec<&FileEntry> = (process * workers..(process + 1) * workers)
            .filter_map(|w| files.iter().find(|f| f.name == checkpoint::worker_file(w)))
            .collect();
        let holds =
            held.get(&process).and_then(|held| held.iter().find(|(n, _)| n == name)).is_some_and(|(_, files)| {
                expected.len() == workers
                    && files.len() == expected.len()
                    && expected
                        .iter()
                        .all(|e| files.iter().any(|f| f.name == e.name && f.bytes == e.bytes && f.crc32 == e.crc32))
            });
        if !holds {
            return Some(format!("process {process} does not hold its files of it intact"));
        }
    }
    None
}
