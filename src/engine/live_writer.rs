//! The live windows' writer: a thread that takes the source's writes of its live windows four
//! times a second and hands them to the store writer ahead of its queue. Worker 0 does not build
//! them: a long dataflow step (a minute of a fast stream) or a full store queue would hold the
//! live windows back by seconds. At most one batch waits: while the store writer has not taken
//! the last, the next is not built (the source's next write holds every change since), so a
//! slow or failed store costs no memory here.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cartflow_connectors::store::FirstLane;
use tracing::warn;

use super::source::Source;

/// How often the live windows are written: events carry whole seconds, so an event is in the
/// windows up to a second after it happened, plus up to this.
const LIVE_WRITES_EVERY: Duration = Duration::from_millis(250);

/// What the thread did: writes handed over, and the time spent building them.
#[derive(Default, Clone, Copy)]
pub struct LiveWrites {
    pub writes: u64,
    pub building: Duration,
}

/// The running thread; stopped (and joined) by [`LiveWriter::stop`] or when dropped.
pub struct LiveWriter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<LiveWrites>>,
}

impl LiveWriter {
    /// Starts the thread when the source keeps live windows.
    pub fn spawn(source: Arc<dyn Source>, lane: FirstLane) -> Option<LiveWriter> {
        source.live_windows_from()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("live-windows".into())
            .spawn(move || {
                let mut done = LiveWrites::default();
                loop {
                    std::thread::park_timeout(LIVE_WRITES_EVERY);
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    if !lane.is_empty() {
                        continue;
                    }
                    let started = Instant::now();
                    if source.live_writes(&mut |batch| lane.push(batch)) {
                        done.writes += 1;
                    }
                    done.building += started.elapsed();
                }
                done
            })
            .expect("spawning the live windows' writer");
        Some(LiveWriter { stop, thread: Some(thread) })
    }

    /// Stops the thread once its current write is handed over; what it did.
    pub fn stop(&mut self) -> LiveWrites {
        self.stop.store(true, Ordering::SeqCst);
        let Some(thread) = self.thread.take() else { return LiveWrites::default() };
        thread.thread().unpark();
        thread.join().unwrap_or_else(|_| {
            warn!("the live windows' writer panicked: the live windows stopped before the end");
            LiveWrites::default()
        })
    }
}

impl Drop for LiveWriter {
    fn drop(&mut self) {
        self.stop();
    }
}
