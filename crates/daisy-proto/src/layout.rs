//! The layout hash: a fingerprint of what makes block indices mean blocks.

use std::fmt::Write;

use daisy_core::Pipeline;
use sha2::{Digest, Sha256};

/// A fingerprint of the pipeline's block layout: task ids, ROIs, fit,
/// conflicts and upstream links (not worker counts, retries, timeouts or
/// commands, which may change between runs without changing any block).
///
/// A run records it; resuming with another layout would map recorded
/// outcomes onto the wrong blocks, so it is refused.
pub fn layout_hash(pipeline: &Pipeline) -> String {
    let mut canonical = String::from("daisy-rs layout v1\n");
    for task in pipeline.tasks() {
        let spec = &task.spec;
        let upstream: Vec<&str> = spec.upstream.iter().map(|u| u.as_str()).collect();
        // Debug forms of Roi are stable: "Roi(offset=(..), shape=(..))".
        let _ = writeln!(
            canonical,
            "task {} total {:?} read {:?} write {:?} fit {} conflict {} upstream {:?}",
            spec.id,
            spec.total_roi,
            spec.read_roi,
            spec.write_roi,
            spec.fit,
            spec.read_write_conflict,
            upstream
        );
    }
    let digest = Sha256::digest(canonical.as_bytes());
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
    }
}
