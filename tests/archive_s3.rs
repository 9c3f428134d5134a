//! The archive on S3 (moto's server, a real S3 API on loopback): the same kill, bootstrap and
//! replay as on a local disk (`common/archive_flow.rs`), with `--root s3://bucket/prefix`. A test
//! binary of its own: it sets the `AWS_*` variables for the whole process.

mod common;

use common::archive_flow::archive_kill_bootstrap_replay;
use common::*;

#[test]
fn the_archive_on_s3_holds_every_offset_once_across_a_kill_and_bootstraps_and_replays_equal_batch() {
    let Some(moto) = Moto::start("cartflow-archive") else { return };
    for (key, value) in moto.env() {
        std::env::set_var(key, value);
    }
    archive_kill_bootstrap_replay(std::path::Path::new("s3://cartflow-archive/shop/history"));
}
