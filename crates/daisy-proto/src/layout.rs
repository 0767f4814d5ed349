//! The layout hash: a fingerprint of what makes block indices mean blocks.
//!
//! # Why a canonical encoding
//! The hash is recorded with every run and compared by every later session,
//! possibly built by another compiler or daisy version, so its input must be
//! defined by this module alone. It is the MessagePack encoding (positional,
//! smallest integer forms) of the `Layout` struct: integers as integers, the fit by
//! its name. `Debug` output, which v1 hashed, is documented as unstable.

use std::fmt::Write;

use daisy_core::{Pipeline, Roi};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Names the encoding below; change it whenever the encoding changes, so
/// that no two encodings can ever produce the same hash by accident.
const LAYOUT_VERSION: &str = "daisy-rs layout v2";

/// What the hash covers, in a fixed order.
#[derive(Serialize)]
struct Layout<'a> {
    version: &'static str,
    tasks: Vec<TaskLayout<'a>>,
}

#[derive(Serialize)]
struct TaskLayout<'a> {
    id: &'a str,
    total_roi: RoiLayout,
    read_roi: RoiLayout,
    write_roi: RoiLayout,
    /// The fit's name in the pipeline file (`valid`, `overhang`, `shrink`).
    fit: String,
    read_write_conflict: bool,
    upstream: Vec<&'a str>,
}

#[derive(Serialize)]
struct RoiLayout {
    offset: Vec<i64>,
    shape: Vec<i64>,
}

impl From<&Roi> for RoiLayout {
    fn from(roi: &Roi) -> Self {
        RoiLayout {
            offset: roi.offset().as_slice().to_vec(),
            shape: roi.shape().as_slice().to_vec(),
        }
    }
}

/// A fingerprint of the pipeline's block layout: task ids, ROIs, fit,
/// conflicts and upstream links (not worker counts, retries, timeouts or
/// commands, which may change between runs without changing any block).
///
/// A run records it; resuming with another layout would map recorded
/// outcomes onto the wrong blocks, so it is refused.
///
/// # Panics
/// Never: the layout holds only strings, integers, booleans and arrays,
/// which MessagePack can always encode into a `Vec`.
pub fn layout_hash(pipeline: &Pipeline) -> String {
    let layout = Layout {
        version: LAYOUT_VERSION,
        tasks: pipeline
            .tasks()
            .iter()
            .map(|task| {
                let spec = &task.spec;
                TaskLayout {
                    id: spec.id.as_str(),
                    total_roi: (&spec.total_roi).into(),
                    read_roi: (&spec.read_roi).into(),
                    write_roi: (&spec.write_roi).into(),
                    fit: spec.fit.to_string(),
                    read_write_conflict: spec.read_write_conflict,
                    upstream: spec.upstream.iter().map(|up| up.as_str()).collect(),
                }
            })
            .collect(),
    };
    let canonical = rmp_serde::to_vec(&layout)
        .expect("encoding strings, integers, booleans and arrays into a Vec cannot fail");
    let digest = Sha256::digest(&canonical);
    digest.iter().take(16).fold(String::with_capacity(32), |mut hex, byte| {
        let _ = write!(hex, "{byte:02x}");
        hex
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use daisy_core::parse_pipeline;

    const PIPELINE: &str = r#"
[[task]]
id = "a"
total_roi = { offset = [0], shape = [12] }
read_roi = { offset = [0], shape = [5] }
write_roi = { offset = [2], shape = [1] }
max_workers = 2
command = ["true"]
"#;

    fn hash(text: &str) -> String {
        layout_hash(&Pipeline::new(parse_pipeline(text).unwrap()).unwrap())
    }

    #[test]
    fn changes_with_the_layout_only() {
        let base = hash(PIPELINE);
        assert_eq!(base.len(), 32);
        assert_eq!(base, hash(&PIPELINE.replace("max_workers = 2", "max_workers = 8")));
        assert_eq!(base, hash(&PIPELINE.replace("[\"true\"]", "[\"false\"]")));
        assert_ne!(base, hash(&PIPELINE.replace("shape = [12]", "shape = [13]")));
        assert_ne!(base, hash(&format!("{PIPELINE}fit = \"shrink\"\n")));
        assert_ne!(base, hash(&format!("{PIPELINE}read_write_conflict = false\n")));
    }

    /// The hash of a fixed pipeline never changes by accident: a new value
    /// here means every recorded run is refused as "layout changed", so it
    /// must come with a new [`LAYOUT_VERSION`].
    #[test]
    fn a_fixed_pipeline_has_a_fixed_hash() {
        let two_tasks = format!(
            "{PIPELINE}
[[task]]
id = \"b-2\"
total_roi = {{ offset = [-2], shape = [16] }}
read_roi = {{ offset = [0], shape = [12] }}
write_roi = {{ offset = [2], shape = [8] }}
fit = \"overhang\"
read_write_conflict = false
upstream = [\"a\"]
command = [\"true\"]
"
        );
        assert_eq!(hash(&two_tasks), "dbbcb4487a967d634b0912135d90e2e1");
    }
}
