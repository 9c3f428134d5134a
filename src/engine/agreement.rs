//! A run of several processes from Kafka: before the run, its processes agree on the checkpoint
//! they continue from, all the same one or none, in a short timely computation of their own on the
//! run's addresses (the run's own starts once it has ended; a process connecting early retries, as
//! at any start).
//!
//! Each process other than 0 tells process 0 whether it was given `--checkpoint-dir` (with what
//! its checkpoints must match, an [`Identity`]) and which checkpoints it holds its files of, intact
//! (see [`checkpoint::held_shares`]). Process 0 checks that every process was started alike,
//! chooses the newest checkpoint it can continue from that every process holds, with the
//! manifest's list of each process's files (see `engine::checkpoints_of`), and tells every
//! process. Runs without checkpoints agree too (on none): a process given `--checkpoint-dir`
//! beside one that was not would otherwise join another computation on the same addresses.

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

use super::checkpoint::{self, FileEntry, Identity, Manifest};

/// The checkpoints a process holds its files of: each one's directory name, and its files.
pub type Held = Vec<(String, Vec<FileEntry>)>;

/// What a process brings: with `--checkpoint-dir`, what its checkpoints must match, and those it
/// holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Offer {
    pub identity: Option<Identity>,
    pub held: Held,
}

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

/// Process 0's decision as JSON text, or why there is none (`true`: the processes were started
/// differently, a configuration error).
type DecisionText = Result<String, (bool, String)>;

/// Both as JSON text: timely's bincode cannot carry a manifest's `serde_json::Value`.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Message {
    Offer {
        process: usize,
        offer: String,
    },
    /// An error says whether the processes were started differently (a configuration error).
    Decision(DecisionText),
}

/// Why the processes cannot run together, if they cannot: each other one must have been given
/// `--checkpoint-dir` exactly when process 0 was, with the same dataflow, steps and source.
fn mismatch(mine: &Offer, offers: &BTreeMap<usize, Offer>) -> Option<String> {
    offers.iter().find_map(|(process, offer)| match (&mine.identity, &offer.identity) {
        (Some(_), None) => Some(format!("process {process} was not given --checkpoint-dir and process 0 was")),
        (None, Some(_)) => Some(format!("process {process} was given --checkpoint-dir and process 0 was not")),
        (Some(mine), Some(theirs)) => {
            theirs.differs_from(mine).map(|why| format!("process {process} differs from process 0: {why}"))
        }
        (None, None) => None,
    })
}

/// Runs the agreement: every process gives its offer (process 0's is compared with the others'),
/// process 0 its choice (`decide`); every process gets the decision.
pub fn agree(
    cluster: timely::Config,
    process: usize,
    workers: usize,
    offer: Offer,
    decide: Option<Decide>,
) -> Result<Option<Decision>> {
    let offer = Arc::new(offer);
    let decide = Arc::new(Mutex::new(decide));
    let guards = timely::execute(cluster, move |worker| {
        let index = worker.index();
        let offers: Rc<RefCell<BTreeMap<usize, Offer>>> = Rc::default();
        let decision: Rc<RefCell<Option<DecisionText>>> = Rc::default();
        let (received, decided) = (offers.clone(), decision.clone());
        let (mut offers_in, mut decision_in, offers_probe, decision_probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (offers_in, offers) = scope.new_input::<Message>();
            let (decision_in, decisions) = scope.new_input::<Message>();
            let offers = offers.exchange(|_| 0).unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
                Pipeline,
                "Offers",
                move |_, _| {
                    move |input, _output| {
                        input.for_each(|_, data| {
                            for message in data.drain(..) {
                                if let Message::Offer { process, offer } = message {
                                    if let Ok(offer) = serde_json::from_str(&offer) {
                                        received.borrow_mut().insert(process, offer);
                                    }
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
            (offers_in, decision_in, offers.probe().0, decisions.probe().0)
        });
        if process != 0 && index == process * workers {
            let text = serde_json::to_string(&*offer).expect("an offer serializes");
            offers_in.send(Message::Offer { process, offer: text });
        }
        drop(offers_in);
        if index == 0 {
            while !offers_probe.done() {
                worker.step_or_park(Some(Duration::from_millis(1)));
            }
            let offers = offers.borrow();
            let decision = match mismatch(&offer, &offers) {
                Some(why) => Err((true, why)),
                None if offers.len() + 1 < worker.peers() / workers => {
                    Err((false, "another process's offer did not read back".to_string()))
                }
                None => {
                    let decide = decide.lock().unwrap().take().expect("process 0 decides");
                    let held = offers.iter().map(|(p, o)| (*p, o.held.clone())).collect();
                    decide(&held)
                        .and_then(|decision| Ok(serde_json::to_string(&decision)?))
                        .map_err(|e| (false, format!("{e:#}")))
                }
            };
            drop(offers);
            decision_in.send(Message::Decision(decision));
        }
        drop(decision_in);
        while !decision_probe.done() {
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
        let decision =
            decision.borrow_mut().take().unwrap_or_else(|| Err((false, "process 0 decided nothing".to_string())))?;
        serde_json::from_str::<Option<Decision>>(&decision)
            .map_err(|e| (false, format!("the decision does not read back: {e}")))
    })
    .map_err(anyhow::Error::msg)?;
    let mut decisions = guards.join().into_iter();
    let first = decisions.next().expect("a process has a worker").map_err(anyhow::Error::msg)?;
    first.map_err(|(config, e)| match config {
        true => crate::exit::config(format!("the processes of this run were started differently: {e}")),
        false => anyhow::anyhow!("process 0 could not choose a checkpoint: {e}"),
    })
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
