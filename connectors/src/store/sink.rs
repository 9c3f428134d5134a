//! The interface every store implements (embedded SQLite, HBase), and a background writer
//! thread for any of them.
//!
//! A sink applies each [`WriteBatch`] whole: SQLite in one transaction; HBase, which has no
//! multi-row transaction, results first and `pipeline_state` last, retrying until it is all in (see
//! [`crate::store::hbase`]). Either way the frontier recorded in `pipeline_state` never runs ahead of the
//! results it covers.

use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};

use anyhow::Result;
pub use cartflow_dataflows::schema::WriteBatch;

pub trait Sink {
    fn write(&mut self, batch: &WriteBatch) -> Result<()>;

    /// Before a run that recomputes everything: the store starts with empty tables. By default it
    /// empties them; a store that can keep showing readers its results until the run has caught
    /// up does that instead (SQLite: see [`crate::store::sqlite`]).
    fn start_over(&mut self) -> Result<()> {
        self.write(&WriteBatch {
            replace: cartflow_dataflows::schema::TABLES.iter().map(|t| t.id).collect(),
            ..Default::default()
        })
    }

    /// Before a run that continues from a checkpoint: the store's `pipeline_state` as it stands
    /// (a rebuild left by a killed run is dropped: the results readers see stay), or `None` when
    /// this store cannot tell, and the run must start over.
    fn resume(&mut self) -> Result<Option<std::collections::BTreeMap<String, String>>> {
        Ok(None)
    }
}

/// Called once each batch is in the store, on the thread that wrote it, before the next batch is
/// written: a program embedding the engine (the tests) reads the store there exactly as of each
/// boundary and each live write.
#[derive(Clone)]
pub struct AfterWrite(pub Arc<dyn Fn(&WriteBatch) + Send + Sync>);

impl std::fmt::Debug for AfterWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AfterWrite(..)")
    }
}

/// A sink that calls [`AfterWrite`] after each write.
pub struct Observed<S> {
    pub inner: S,
    pub after: AfterWrite,
}

impl<S: Sink> Sink for Observed<S> {
    fn write(&mut self, batch: &WriteBatch) -> Result<()> {
        self.inner.write(batch)?;
        (self.after.0)(batch);
        Ok(())
    }

    fn start_over(&mut self) -> Result<()> {
        self.inner.start_over()
    }

    fn resume(&mut self) -> Result<Option<std::collections::BTreeMap<String, String>>> {
        self.inner.resume()
    }
}

impl Sink for Box<dyn Sink + Send> {
    fn resume(&mut self) -> Result<Option<std::collections::BTreeMap<String, String>>> {
        (**self).resume()
    }

    fn write(&mut self, batch: &WriteBatch) -> Result<()> {
        (**self).write(batch)
    }

    fn start_over(&mut self) -> Result<()> {
        (**self).start_over()
    }
}

/// A sink written by a thread of its own, so that the engine computes the next step while the
/// store applies the last one. Jobs are applied in order; at most `depth` wait (bounded memory).
/// A job is a [`WriteBatch`], or anything the thread first turns into one (see
/// [`BackgroundSink::spawn_preparing`]). The first failure stops the writer; it is returned by the
/// next [`BackgroundSink::write`] or by [`BackgroundSink::finish`].
///
/// Batches pushed onto its [`BackgroundSink::first_lane`] skip the queue: the thread writes them
/// before its next job, and between preparing a job and writing it (the live windows' writes
/// must not wait behind a large boundary). A queued job may write the same rows only when it
/// prepares them after every lane batch built before it was pushed (the live windows' finals:
/// the lane batch is built and pushed under the windows' lock, which preparing a boundary takes).
pub struct BackgroundSink<J = WriteBatch> {
    sender: Option<std::sync::mpsc::SyncSender<J>>,
    first: Arc<Mutex<Vec<WriteBatch>>>,
    writer: Option<std::thread::JoinHandle<Result<WriterStats>>>,
}

/// Where batches that skip a [`BackgroundSink`]'s queue wait (see [`BackgroundSink::first_lane`]):
/// another thread may hold it and never waits to hand one over.
#[derive(Clone)]
pub struct FirstLane(Arc<Mutex<Vec<WriteBatch>>>);

impl FirstLane {
    /// Written before the sink's next queued job, after the batches given before it.
    pub fn push(&self, batch: WriteBatch) {
        self.0.lock().unwrap().push(batch);
    }

    /// Every batch pushed has been taken by the writer thread.
    pub fn is_empty(&self) -> bool {
        self.0.lock().unwrap().is_empty()
    }
}

/// How long the writer thread waits for a job before it looks at the batches that skip the queue.
const FIRST_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// What the writer thread did.
#[derive(Debug, Default, Clone, Copy)]
pub struct WriterStats {
    pub batches: u64,
    pub rows: u64,
    /// Time spent turning jobs into batches.
    pub preparing: std::time::Duration,
    /// Time spent writing batches.
    pub busy: std::time::Duration,
    /// CPU time of the writer thread (see [`crate::progress::thread_cpu_time`]).
    pub cpu: Option<std::time::Duration>,
}

impl BackgroundSink<WriteBatch> {
    pub fn spawn<S: Sink + Send + 'static>(sink: S, depth: usize) -> BackgroundSink {
        BackgroundSink::spawn_preparing(sink, depth, |batch| batch)
    }
}

impl<J: Send + 'static> BackgroundSink<J> {
    /// A writer thread that turns each job into a batch with `prepare` before writing it, so that
    /// this work, too, leaves the thread that queues the jobs.
    pub fn spawn_preparing<S, P>(mut sink: S, depth: usize, mut prepare: P) -> BackgroundSink<J>
    where
        S: Sink + Send + 'static,
        P: FnMut(J) -> WriteBatch + Send + 'static,
    {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<J>(depth);
        let first: Arc<Mutex<Vec<WriteBatch>>> = Arc::default();
        let skipping = first.clone();
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                let mut stats = WriterStats::default();
                let write = |sink: &mut S, batch: &WriteBatch, stats: &mut WriterStats| -> Result<()> {
                    let started = std::time::Instant::now();
                    sink.write(batch)?;
                    stats.busy += started.elapsed();
                    stats.batches += 1;
                    stats.rows += (batch.upserts.len() + batch.deletes.len()) as u64;
                    Ok(())
                };
                let write_first = |sink: &mut S, stats: &mut WriterStats| -> Result<()> {
                    let batches = std::mem::take(&mut *skipping.lock().unwrap());
                    batches.iter().try_for_each(|batch| write(sink, batch, stats))
                };
                loop {
                    write_first(&mut sink, &mut stats)?;
                    let job = match receiver.recv_timeout(FIRST_POLL) {
                        Ok(job) => job,
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => break,
                    };
                    let started = std::time::Instant::now();
                    let batch = prepare(job);
                    stats.preparing += started.elapsed();
                    write_first(&mut sink, &mut stats)?;
                    write(&mut sink, &batch, &mut stats)?;
                }
                write_first(&mut sink, &mut stats)?;
                stats.cpu = crate::progress::thread_cpu_time();
                Ok(stats)
            })
            .expect("spawning the store writer");
        BackgroundSink { sender: Some(sender), first, writer: Some(writer) }
    }
}

impl<J> BackgroundSink<J> {
    /// Queues a job (waits while `depth` jobs are queued).
    pub fn write(&mut self, job: J) -> Result<()> {
        let sender = self.sender.as_ref().expect("the sink is open until finish");
        if sender.send(job).is_err() {
            // The writer stopped, so it failed: report its error.
            self.finish()?;
            anyhow::bail!("the store writer stopped");
        }
        Ok(())
    }

    /// The lane of batches that skip the queue (never waits): each is written before the next
    /// job, after those pushed before it (see the type's doc for rows a job writes too).
    pub fn first_lane(&self) -> FirstLane {
        FirstLane(self.first.clone())
    }

    /// Waits until every queued batch is applied.
    pub fn finish(&mut self) -> Result<WriterStats> {
        drop(self.sender.take());
        match self.writer.take() {
            Some(writer) => writer.join().map_err(|_| anyhow::anyhow!("the store writer panicked"))?,
            None => anyhow::bail!("the store writer has already stopped"),
        }
    }
}

impl<J> Drop for BackgroundSink<J> {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the state entries of each batch; fails on the batch whose state says "fail".
    struct Recording(Arc<Mutex<Vec<String>>>);

    impl Sink for Recording {
        fn write(&mut self, batch: &WriteBatch) -> Result<()> {
            for (key, value) in &batch.state {
                if key == "fail" {
                    anyhow::bail!("disk full at {value}");
                }
                self.0.lock().unwrap().push(value.clone());
            }
            Ok(())
        }
    }

    fn batch(key: &str, value: &str) -> WriteBatch {
        WriteBatch { state: vec![(key.to_string(), value.to_string())], ..Default::default() }
    }

    #[test]
    fn background_writes_arrive_in_order_and_finish_waits_for_them() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut sink = BackgroundSink::spawn(Recording(seen.clone()), 1);
        for i in 0..50 {
            sink.write(batch("frontier", &i.to_string())).unwrap();
        }
        let stats = sink.finish().unwrap();
        assert_eq!(stats.batches, 50);
        let expected: Vec<String> = (0..50).map(|i| i.to_string()).collect();
        assert_eq!(*seen.lock().unwrap(), expected);
    }

    /// A sink that takes a while per batch, so that jobs queue behind it.
    struct Slow(Recording);

    impl Sink for Slow {
        fn write(&mut self, batch: &WriteBatch) -> Result<()> {
            std::thread::sleep(std::time::Duration::from_millis(100));
            self.0.write(batch)
        }
    }

    #[test]
    fn batches_written_first_skip_the_queue_in_their_own_order() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut sink = BackgroundSink::spawn(Slow(Recording(seen.clone())), 3);
        for i in 0..4 {
            sink.write(batch("frontier", &format!("b{i}"))).unwrap();
        }
        // b0 is being written, b1..b3 wait (the queue holds 3): l0 and l1 go before b1..b3.
        let lane = sink.first_lane();
        lane.push(batch("live_edge", "l0"));
        lane.push(batch("live_edge", "l1"));
        let stats = sink.finish().unwrap();
        assert_eq!(stats.batches, 6);
        let seen = seen.lock().unwrap().clone();
        let at = |name: &str| seen.iter().position(|v| v == name).unwrap();
        assert!(at("l0") < at("l1") && at("l1") < at("b2") && at("b1") < at("b2") && at("b2") < at("b3"), "{seen:?}");
    }

    #[test]
    fn a_failed_write_is_reported_with_its_reason() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut sink = BackgroundSink::spawn(Recording(seen.clone()), 1);
        sink.write(batch("frontier", "1")).unwrap();
        sink.write(batch("fail", "2")).unwrap();
        // Later writes or the finish report the writer's error, never success.
        let mut outcome = Ok(());
        for i in 3..20 {
            outcome = sink.write(batch("frontier", &i.to_string()));
            if outcome.is_err() {
                break;
            }
        }
        let error = match outcome {
            Err(error) => error,
            Ok(()) => sink.finish().unwrap_err(),
        };
        assert!(format!("{error:#}").contains("disk full at 2"), "{error:#}");
        assert_eq!(*seen.lock().unwrap(), vec!["1".to_string()]);
    }
}
