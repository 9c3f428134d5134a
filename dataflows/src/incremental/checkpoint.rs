//! Operator state for checkpoints: each stateful operator keeps its state in a cell registered
//! with its worker's [`Registry`], so the worker can write every operator's state at a boundary
//! and a new run can build the same dataflow starting from it.
//!
//! A worker installs a registry on its thread before it builds the dataflow ([`install`]), with
//! the checkpoint to restore from, if any; each operator takes its cell with [`state`], under its
//! name and the order it is built in (every run builds the same operators in the same order, so
//! the pair names one operator across runs); the worker then takes the registry back ([`take`]).
//!
//! The format streams: the number of states, then per state its key and its value (bincode), in
//! the order the operators registered. Writing needs no buffer of the state's size (the engine
//! writes from a forked child, see `src/engine/checkpoint.rs`), and reading deserializes each
//! operator's state straight from the file as the operator is built.
//!
//! Only the state that outlives a time is registered: what waits for the frontier is not, since a
//! checkpoint is taken where no operator has applied anything at or after its boundary, and what
//! waits then is input of the next step, which the source sends again after a restore.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::rc::Rc;

use serde::de::DeserializeOwned;
use serde::Serialize;

type Writer = Box<dyn Fn(&mut dyn Write) -> bincode::Result<()>>;

/// The stateful operators of one worker's dataflow.
#[derive(Default)]
pub struct Registry {
    /// The checkpoint being restored, read as the operators are built, and the states it holds.
    restoring: Option<(Box<dyn Read>, u64)>,
    /// A state that did not read back: the checkpoint does not fit this dataflow.
    failure: Option<String>,
    /// Each registered operator's key, the name of its state's type, and how to write its state.
    states: Vec<(String, &'static str, Writer)>,
    /// Operators built so far per name.
    built: BTreeMap<String, usize>,
}

thread_local! {
    static REGISTRY: RefCell<Option<Registry>> = const { RefCell::new(None) };
}

/// Installs a registry on this thread for the dataflow about to be built, restoring from
/// `checkpoint` (a worker's file, see [`Registry::write_to`]) if given.
pub fn install(checkpoint: Option<Box<dyn Read>>) {
    let mut registry = Registry::default();
    if let Some(mut reader) = checkpoint {
        match bincode::deserialize_from::<_, u64>(&mut reader) {
            Ok(count) => registry.restoring = Some((reader, count)),
            Err(e) => registry.failure = Some(format!("the checkpoint does not read: {e}")),
        }
    }
    REGISTRY.with(|r| *r.borrow_mut() = Some(registry));
}

/// Takes back the registry once the dataflow is built; an error when a restored state did not fit
/// or the checkpoint holds another number of states (it was written by another dataflow).
pub fn take() -> Result<Option<Registry>, String> {
    let Some(mut registry) = REGISTRY.with(|r| r.borrow_mut().take()) else { return Ok(None) };
    if let Some(failure) = &registry.failure {
        return Err(failure.clone());
    }
    if let Some((_, count)) = registry.restoring.take() {
        if count != registry.states.len() as u64 {
            return Err(format!(
                "the checkpoint holds {count} operator states, this dataflow has {}",
                registry.states.len()
            ));
        }
    }
    Ok(Some(registry))
}

/// The state cell of the operator `name` being built: read from the checkpoint being restored if
/// there is one, else `fresh`. Without a registry installed (tests, `batch`) the cell is not
/// registered.
pub fn state<S: Serialize + DeserializeOwned + 'static>(name: &str, fresh: impl FnOnce() -> S) -> Rc<RefCell<S>> {
    REGISTRY.with(|r| {
        let mut registry = r.borrow_mut();
        let Some(registry) = registry.as_mut() else { return Rc::new(RefCell::new(fresh())) };
        let nth = registry.built.entry(name.to_owned()).or_insert(0);
        let key = format!("{name}#{nth}");
        *nth += 1;
        let index = registry.states.len() as u64;
        let restored = match (&mut registry.restoring, &registry.failure) {
            (Some((reader, count)), None) if index < *count => read_state::<S>(reader, &key).map(Some),
            (Some(_), None) => Err(format!("the checkpoint has no state for {key}")),
            _ => Ok(None),
        };
        let state = match restored {
            Ok(Some(state)) => state,
            Ok(None) => fresh(),
            Err(failure) => {
                registry.failure.get_or_insert(failure);
                fresh()
            }
        };
        let cell = Rc::new(RefCell::new(state));
        let held = cell.clone();
        let write: Writer = Box::new(move |out: &mut dyn Write| bincode::serialize_into(out, &*held.borrow()));
        registry.states.push((key, std::any::type_name::<S>(), write));
        cell
    })
}

/// Reads the next state of a checkpoint, which must be `key`'s.
fn read_state<S: DeserializeOwned>(reader: &mut Box<dyn Read>, key: &str) -> Result<S, String> {
    let found: String = bincode::deserialize_from(&mut *reader).map_err(|e| format!("reading {key}: {e}"))?;
    if found != key {
        return Err(format!("the checkpoint has {found} where this dataflow has {key}"));
    }
    bincode::deserialize_from(&mut *reader).map_err(|e| format!("the state of {key} does not read back: {e}"))
}

impl Registry {
    /// Writes every registered operator's state (see the module's doc), without a buffer of the
    /// state's size, so that a forked child can call it.
    pub fn write_to(&self, out: &mut dyn Write) -> bincode::Result<()> {
        bincode::serialize_into(&mut *out, &(self.states.len() as u64))?;
        for (key, _, write) in &self.states {
            bincode::serialize_into(&mut *out, key)?;
            write(&mut *out)?;
        }
        Ok(())
    }

    /// The registered operators and the types of their states: two dataflows whose fingerprints
    /// are equal read each other's checkpoints.
    pub fn fingerprint(&self) -> String {
        self.states.iter().map(|(key, type_name, _)| format!("{key}: {type_name}\n")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// States written by one registry read back into another built the same way; a registry
    /// built otherwise is told the checkpoint does not fit.
    #[test]
    fn states_round_trip_and_another_dataflow_is_refused() {
        install(None);
        let a = state("A", || vec![1_u32, 2, 3]);
        let b = state("B", || String::from("b"));
        a.borrow_mut().push(4);
        let registry = take().unwrap().unwrap();
        let mut bytes = Vec::new();
        registry.write_to(&mut bytes).unwrap();

        install(Some(Box::new(std::io::Cursor::new(bytes.clone()))));
        let a2 = state("A", Vec::<u32>::new);
        let b2 = state("B", String::new);
        take().unwrap().unwrap();
        assert_eq!(*a2.borrow(), vec![1, 2, 3, 4]);
        assert_eq!(*b2.borrow(), *b.borrow());

        install(Some(Box::new(std::io::Cursor::new(bytes.clone()))));
        let _ = state("B", String::new);
        assert!(take().err().unwrap().contains("where this dataflow has B#0"));

        install(Some(Box::new(std::io::Cursor::new(bytes))));
        let _ = state("A", Vec::<u32>::new);
        assert!(take().err().unwrap().contains("holds 2 operator states"));
    }
}
