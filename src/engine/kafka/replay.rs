//! A bootstrap's replay of the archive: each source thread reads its partitions' archived files
//! in offset order (the order the topic gave them), the partitions interleaved by event time.

use cartflow_connectors::archive::{self, ArchiveFile, ArchiveRoot, ArchivedEvent};
use std::collections::VecDeque;

/// A thread's share of the archive, read per partition in offset order (the order the topic gave
/// them), the partitions interleaved by event time.
pub(super) struct Replay {
    root: ArchiveRoot,
    pub(super) partitions: Vec<(VecDeque<ArchiveFile>, VecDeque<ArchivedEvent>)>,
    pub(super) symbols: rustc_hash::FxHashMap<String, cartflow_dataflows::model::Symbol>,
    /// Files that could not be read (their keys under the root), with why.
    pub(super) bad_files: Vec<(String, String)>,
}

impl Replay {
    pub(super) fn new(root: &ArchiveRoot, files: Vec<ArchiveFile>, owned: &[i32]) -> Option<Replay> {
        if files.is_empty() {
            return None;
        }
        let partitions = owned
            .iter()
            .map(|p| {
                let mut mine: Vec<ArchiveFile> = files.iter().filter(|f| f.partition == *p).cloned().collect();
                mine.sort_by_key(|f| f.first_offset);
                (VecDeque::from(mine), VecDeque::new())
            })
            .collect();
        Some(Replay { root: root.clone(), partitions, symbols: Default::default(), bad_files: Vec::new() })
    }

    /// The next archived event, or `None` once every partition's files are read.
    pub(super) fn next(&mut self) -> Option<ArchivedEvent> {
        for (files, buffer) in &mut self.partitions {
            if buffer.is_empty() && !files.is_empty() {
                // Files whose offset ranges overlap (one flush's hours) are merged by offset.
                let mut group = vec![files.pop_front().expect("not empty")];
                let mut last = group[0].last_offset;
                while files.front().is_some_and(|f| f.first_offset <= last) {
                    let file = files.pop_front().expect("not empty");
                    last = last.max(file.last_offset);
                    group.push(file);
                }
                let mut events = Vec::new();
                for file in group {
                    match archive::read_file(&self.root, &file, &mut self.symbols) {
                        Ok(mut found) => events.append(&mut found),
                        Err(error) => {
                            self.bad_files.push((format!("{}/{}", self.root, file.key), format!("{error:#}")))
                        }
                    }
                }
                events.sort_unstable_by_key(|e| e.offset);
                buffer.extend(events);
            }
        }
        let (_, buffer) = self
            .partitions
            .iter_mut()
            .filter(|(_, buffer)| !buffer.is_empty())
            .min_by_key(|(_, buffer)| buffer.front().map(|e| e.event.time))?;
        buffer.pop_front()
    }
}
