//! Time spent in each dataflow operator, from timely's own scheduling log: set
//! `CARTFLOW_PROFILE_OPERATORS=1` and every worker logs its operators by total time at the end of
//! `run`. A developer's tool for finding where the engine spends its time.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use timely::logging::{StartStop, TimelyEvent, TimelyEventBuilder};
use tracing::info;

pub const ENV: &str = "CARTFLOW_PROFILE_OPERATORS";

#[derive(Default)]
struct Times {
    names: HashMap<usize, (Vec<usize>, String)>,
    open: Vec<(usize, Duration)>,
    total: HashMap<usize, Duration>,
}

/// Collects scheduling times on this worker (when [`ENV`] is set); report with [`OperatorProfile::report`].
pub struct OperatorProfile(Option<Rc<RefCell<Times>>>);

impl OperatorProfile {
    pub fn register(worker: &mut timely::worker::Worker) -> OperatorProfile {
        if std::env::var_os(ENV).is_none() {
            return OperatorProfile(None);
        }
        let times: Rc<RefCell<Times>> = Rc::default();
        let sink = times.clone();
        worker.log_register().expect("a log registry").insert::<TimelyEventBuilder, _>("timely", move |_, data| {
            let Some(data) = data else { return };
            let mut times = sink.borrow_mut();
            for (at, event) in data.iter() {
                match event {
                    TimelyEvent::Operates(op) => {
                        times.names.insert(op.id, (op.addr.clone(), op.name.clone()));
                    }
                    TimelyEvent::Schedule(s) => match s.start_stop {
                        StartStop::Start => times.open.push((s.id, *at)),
                        StartStop::Stop => {
                            if let Some((id, start)) = times.open.pop() {
                                *times.total.entry(id).or_default() += at.saturating_sub(start);
                            }
                        }
                    },
                    _ => {}
                }
            }
        });
        OperatorProfile(Some(times))
    }

    /// Logs the operators that took the most time (inclusive of operators nested in them).
    pub fn report(&self, worker: usize) {
        let Some(times) = &self.0 else { return };
        let times = times.borrow();
        let mut rows: Vec<(Duration, String)> = times
            .total
            .iter()
            .map(|(id, total)| {
                let (addr, name) = times.names.get(id).cloned().unwrap_or_default();
                (*total, format!("{name} {addr:?}"))
            })
            .collect();
        rows.sort_by_key(|row| std::cmp::Reverse(row.0));
        for (total, name) in rows.iter().take(40) {
            info!("worker {worker}: {:>8.3}s {name}", total.as_secs_f64());
        }
    }
}
