//! The block plan of a pipeline, as `daisy plan --json [--blocks]` prints it.
//!
//! The schema is the one of Daisy's own plans (the fixtures under
//! `tests/fixtures/daisy-plans` were computed by Daisy 1.2.3):
//!
//! ```text
//! {"tasks": [{"id", "num_blocks", "num_levels",
//!             "blocks": [{"block_id", "level", "read_roi": {"offset", "shape"},
//!                         "write_roi": {"offset", "shape"},
//!                         "upstream": [{"task", "block_id"}]}]}]}
//! ```
//!
//! Blocks come in Daisy's enumeration order (level by level, last axis
//! fastest), ROIs after shrinking, and `upstream` sorted by block id, then
//! task id. Listing blocks materialises them: it is meant for inspecting
//! small pipelines, not for 10^9 blocks (the summary form is O(tasks)).

use std::ops::ControlFlow;

use serde::Serialize;

use crate::{BlockId, Pipeline, Roi, TaskIndex};

/// The plan of a whole pipeline.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// One entry per task, in the order given.
    pub tasks: Vec<TaskPlan>,
}

/// The plan of one task.
#[derive(Debug, Clone, Serialize)]
pub struct TaskPlan {
    /// The task id.
    pub id: String,
    /// How many blocks the task has.
    pub num_blocks: u64,
    /// How many conflict levels.
    pub num_levels: usize,
    /// Every block, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocks: Option<Vec<BlockPlan>>,
}

/// One block of a plan.
#[derive(Debug, Clone, Serialize)]
pub struct BlockPlan {
    /// Daisy's block id.
    pub block_id: BlockId,
    /// The conflict level.
    pub level: usize,
    /// What it reads.
    pub read_roi: Roi,
    /// What it writes.
    pub write_roi: Roi,
    /// What it waits for.
    pub upstream: Vec<BlockRef>,
}

/// A reference to a block of some task.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct BlockRef {
    /// The task id.
    pub task: String,
    /// Daisy's block id.
    pub block_id: BlockId,
}

impl Plan {
    /// The plan of `pipeline`, with every block listed if `with_blocks`.
    pub fn new(pipeline: &Pipeline, with_blocks: bool) -> Self {
        let tasks = (0..pipeline.len())
            .map(|position| {
                let task_index = TaskIndex(position as u32);
                let task = pipeline.task(task_index);
                let blocks = with_blocks.then(|| {
                    (0..task.grid.num_blocks())
                        .map(|n| block_plan(pipeline, task_index, n))
                        .collect()
                });
                TaskPlan {
                    id: task.spec.id.to_string(),
                    num_blocks: task.grid.num_blocks(),
                    num_levels: task.grid.num_levels(),
                    blocks,
                }
            })
            .collect();
        Self { tasks }
    }
}

fn block_plan(pipeline: &Pipeline, task: TaskIndex, n: u64) -> BlockPlan {
    let block = pipeline.block_at(task, pipeline.task(task).grid.nth_block(n));
    let mut upstream = Vec::new();
    let _ = pipeline.try_for_each_upstream(block.key, |up| {
        let up_task = pipeline.task(up.task);
        upstream.push(BlockRef {
            task: up_task.spec.id.to_string(),
            block_id: up_task.grid.block_id(&up_task.grid.grid_index(up.index)),
        });
        ControlFlow::Continue(())
    });
    upstream.sort_by(|a, b| (a.block_id, &a.task).cmp(&(b.block_id, &b.task)));
    BlockPlan {
        block_id: block.block_id,
        level: block.level,
        read_roi: block.read_roi,
        write_roi: block.write_roi,
        upstream,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::parse_pipeline;

    fn fixtures_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/daisy-plans")
    }

    /// Every fixture plan computed by Daisy, compared whole.
    #[test]
    fn plans_equal_daisys_for_every_fixture() {
        let mut checked = 0;
        let mut refused = 0;
        let mut entries: Vec<_> = std::fs::read_dir(fixtures_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        entries.sort();
        for toml_path in entries {
            let text = std::fs::read_to_string(&toml_path).unwrap();
            let expected: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(toml_path.with_extension("json")).unwrap(),
            )
            .unwrap();
            let specs = parse_pipeline(&text).unwrap();
            let name = toml_path.file_name().unwrap().to_string_lossy().into_owned();
            if expected.get("refused").is_some() {
                let err = Pipeline::new(specs).expect_err(&name);
                assert!(matches!(err, crate::PipelineError::Unreachable { .. }), "{name}: {err}");
                refused += 1;
                continue;
            }
            let pipeline = Pipeline::new(specs).unwrap_or_else(|e| panic!("{name}: {e}"));
            let actual = serde_json::to_value(Plan::new(&pipeline, true)).unwrap();
            if actual != expected {
                for (a, e) in actual["tasks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .zip(expected["tasks"].as_array().unwrap())
                {
                    for (ab, eb) in
                        a["blocks"].as_array().unwrap().iter().zip(e["blocks"].as_array().unwrap())
                    {
                        assert_eq!(ab, eb, "{name}: first differing block");
                    }
                    assert_eq!(a["num_blocks"], e["num_blocks"], "{name}");
                }
                panic!("{name}: plans differ");
            }
            checked += 1;
        }
        assert_eq!((checked, refused), (47, 1), "all 48 fixtures were compared");
    }
}
