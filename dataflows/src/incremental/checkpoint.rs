//! Operator state for checkpoints: each stateful operator keeps its state in a cell registered
//! with its worker's [`Registry`], so the worker can serialize every operator's state at a
//! boundary and a new run can build the same dataflow starting from it.
//!
//! A worker installs a registry on its thread before it builds the dataflow ([`install`]), with
//! the states to restore, if any; each operator takes its cell with [`state`], under its name and
//! the order it is built in (every run builds the same operators in the same order, so the pair
//! names one operator across runs); the worker then takes the registry back ([`take`]).
//!
//! Only the state that outlives a time is registered: what waits for the frontier is not, since a
//! checkpoint is taken where no operator has applied anything at or after its boundary, and what
//! waits then is input of the next step, which the source sends again after a restore.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use serde::de::DeserializeOwned;
use serde::Serialize;

type Serializer = Box<dyn Fn() -> bincode::Result<Vec<u8>>>;

/// The stateful operators of one worker's dataflow.
#[derive(Default)]
pub struct Registry {
    /// States to restore, by operator key (taken as the operators are built).
    restored: BTreeMap<String, Vec<u8>>,
    /// A checkpoint is being restored: every operator must find its state.
    restoring: bool,
    /// A state that did not deserialize: the checkpoint does not fit this dataflow.
    failure: Option<String>,
    /// Each registered operator's key and how to serialize its state.
    states: Vec<(String, Serializer)>,
    /// Operators built so far per name.
    built: BTreeMap<String, usize>,
}

thread_local! {
    static REGISTRY: RefCell<Option<Registry>> = const { RefCell::new(None) };
}

/// Installs a registry on this thread for the dataflow about to be built, with the states to
/// restore (empty: a fresh start).
pub fn install(restored: BTreeMap<String, Vec<u8>>) {
    REGISTRY.with(|r| {
        *r.borrow_mut() = Some(Registry { restoring: !restored.is_empty(), restored, ..Registry::default() })
    });
}

/// Takes back the registry once the dataflow is built; an error when a restored state did not fit
/// or was not taken by any operator (the checkpoint was written by another dataflow).
pub fn take() -> Result<Option<Registry>, String> {
    let Some(registry) = REGISTRY.with(|r| r.borrow_mut().take()) else { return Ok(None) };
    if let Some(failure) = &registry.failure {
        return Err(failure.clone());
    }
    if let Some(key) = registry.restored.keys().next() {
        return Err(format!("the checkpoint holds state for an operator this dataflow does not have ({key})"));
    }
    Ok(Some(registry))
}

/// The state cell of the operator `name` being built: restored from the checkpoint when there is
/// one, else `fresh`. Without a registry installed (tests, `batch`) the cell is not registered.
pub fn state<S: Serialize + DeserializeOwned + 'static>(name: &str, fresh: impl FnOnce() -> S) -> Rc<RefCell<S>> {
    REGISTRY.with(|r| {
        let mut registry = r.borrow_mut();
        let Some(registry) = registry.as_mut() else { return Rc::new(RefCell::new(fresh())) };
        let nth = registry.built.entry(name.to_owned()).or_insert(0);
        let key = format!("{name}#{nth}");
        *nth += 1;
        let state = match registry.restored.remove(&key) {
            Some(bytes) => match bincode::deserialize::<S>(&bytes) {
                Ok(state) => state,
                Err(e) => {
                    registry.failure.get_or_insert(format!("the state of {key} does not read back: {e}"));
                    fresh()
                }
            },
            None if registry.restoring => {
                registry.failure.get_or_insert(format!("the checkpoint has no state for {key}"));
                fresh()
            }
            None => fresh(),
        };
        let cell = Rc::new(RefCell::new(state));
        let held = cell.clone();
        registry.states.push((key, Box::new(move || bincode::serialize(&*held.borrow()))));
        cell
    })
}

impl Registry {
    /// Every registered operator's state, serialized: one blob for the worker.
    pub fn snapshot(&self) -> bincode::Result<Vec<u8>> {
        let mut states: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
        for (key, serialize) in &self.states {
            states.insert(key, serialize()?);
        }
        bincode::serialize(&states)
    }

    /// Reads a blob written by [`Registry::snapshot`] into the states to [`install`].
    pub fn parse(blob: &[u8]) -> bincode::Result<BTreeMap<String, Vec<u8>>> {
        bincode::deserialize(blob)
    }

    /// How many operators registered state.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }
}
