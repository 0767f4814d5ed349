//! A validated pipeline: tasks, their block grids, the task DAG, and the
//! block dependencies computed from geometry on demand.
//!
//! Dependencies are never stored. The upstream of a block is its
//! conflicting neighbours of the previous level plus, for every upstream
//! task, the blocks whose write ROI intersects the block's read ROI (a box
//! of grid indices found by snapping the ROI to that task's grid). The
//! downstream is the exact reverse. Both are a handful of integer
//! operations per neighbour.
//!
//! Validation refuses, with the task and the field named, everything that
//! would make a run wrong or hang: duplicate or unknown task ids, cycles,
//! dimension mismatches, ROIs that do not tile, `max_workers = 0`, and a
//! downstream task with blocks that read nothing an upstream task writes
//! (such a block would never become ready; Daisy 1.x hangs on it).

use std::collections::HashMap;
use std::ops::ControlFlow;

use crate::{BlockGrid, BlockId, BlockIndex, Coordinate, GridError, Roi, TaskId, TaskSpec};

/// A task's position in its pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskIndex(pub u32);

impl TaskIndex {
    /// As a `usize`, for indexing.
    #[inline]
    pub fn get(self) -> usize {
        self.0 as usize
    }
}

/// A block, named compactly: its task and its dense index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockKey {
    /// The block's task.
    pub task: TaskIndex,
    /// The block's dense index in its task's grid.
    pub index: BlockIndex,
}

/// Everything about one block, as users see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// The compact name of the block.
    pub key: BlockKey,
    /// Daisy's block id.
    pub block_id: BlockId,
    /// The block's position in its task's grid, in blocks.
    pub grid_index: Coordinate,
    /// The conflict level.
    pub level: usize,
    /// What the block reads (cropped for `fit = "shrink"`).
    pub read_roi: Roi,
    /// What the block writes (cropped for `fit = "shrink"`).
    pub write_roi: Roi,
}

/// One task of a validated pipeline.
#[derive(Debug, Clone)]
pub struct PipelineTask {
    /// The task as specified.
    pub spec: TaskSpec,
    /// Its block grid.
    pub grid: BlockGrid,
    /// Tasks this one reads from.
    pub upstream: Vec<TaskIndex>,
    /// Tasks that read from this one.
    pub downstream: Vec<TaskIndex>,
}

/// Why a set of tasks is not a valid pipeline. Every variant names the task
/// and, where one is at fault, the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipelineError {
    /// No task was given.
    #[error("the pipeline has no tasks")]
    NoTasks,
    /// Two tasks share an id.
    #[error("task '{task}': id: two tasks have this id; task ids must be unique")]
    DuplicateTaskId {
        /// The repeated id.
        task: TaskId,
    },
    /// A task names an upstream task that does not exist.
    #[error("task '{task}': upstream: no task has the id '{upstream}'; known tasks: {known}")]
    UnknownUpstream {
        /// The task naming it.
        task: TaskId,
        /// The missing id.
        upstream: String,
        /// The ids that exist, comma-separated.
        known: String,
    },
    /// The upstream relation has a cycle.
    #[error(
        "tasks {}: upstream: these tasks depend on each other in a cycle; remove one of the upstream links",
        tasks.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ")
    )]
    Cycle {
        /// The tasks on or behind the cycle.
        tasks: Vec<TaskId>,
    },
    /// The task's ROIs do not tile.
    #[error("task '{task}': {source}")]
    Grid {
        /// The task.
        task: TaskId,
        /// What is wrong with its ROIs.
        #[source]
        source: GridError,
    },
    /// A task and its upstream task differ in dimensionality.
    #[error(
        "task '{task}': upstream: task '{upstream}' is {upstream_dims}-D but this task is {dims}-D"
    )]
    UpstreamDims {
        /// The downstream task.
        task: TaskId,
        /// Its upstream task.
        upstream: TaskId,
        /// Dimensions of `task`.
        dims: usize,
        /// Dimensions of `upstream`.
        upstream_dims: usize,
    },
    /// `max_workers` is 0, so nothing would ever run.
    #[error("task '{task}': max_workers: 0 workers would never process a block; use 1 or more")]
    ZeroMaxWorkers {
        /// The task.
        task: TaskId,
    },
    /// `timeout` is zero.
    #[error("task '{task}': timeout: must be longer than 0s")]
    ZeroTimeout {
        /// The task.
        task: TaskId,
    },
    /// Some blocks of a downstream task read nothing an upstream task
    /// writes, so they would never become ready.
    #[error(
        "task '{task}': upstream: the block with read ROI {read_roi} reads nothing that upstream \
         task '{upstream}' writes (it writes {upstream_written}); such a block would never become \
         ready. Make total_roi of '{task}' lie within what '{upstream}' writes, grow its read_roi, \
         or remove the upstream link"
    )]
    Unreachable {
        /// The downstream task.
        task: TaskId,
        /// The upstream task.
        upstream: TaskId,
        /// The read ROI of one block that reads nothing.
        read_roi: Roi,
        /// The region the upstream task's blocks write.
        upstream_written: Roi,
    },
}

/// A validated pipeline. See the module docs.
#[derive(Debug, Clone)]
pub struct Pipeline {
    tasks: Vec<PipelineTask>,
    topological_order: Vec<TaskIndex>,
}

impl Pipeline {
    /// Validates tasks and builds their grids and the task DAG.
    ///
    /// # Errors
    /// The first [`PipelineError`] found.
    pub fn new(specs: Vec<TaskSpec>) -> Result<Self, PipelineError> {
        if specs.is_empty() {
            return Err(PipelineError::NoTasks);
        }
        let mut by_id: HashMap<&TaskId, TaskIndex> = HashMap::new();
        for (position, spec) in specs.iter().enumerate() {
            if by_id.insert(&spec.id, TaskIndex(position as u32)).is_some() {
                return Err(PipelineError::DuplicateTaskId { task: spec.id.clone() });
            }
        }
        let mut tasks = Vec::with_capacity(specs.len());
        for spec in &specs {
            let grid = BlockGrid::new(
                spec.total_roi,
                spec.read_roi,
                spec.write_roi,
                spec.fit,
                spec.read_write_conflict,
            )
            .map_err(|source| PipelineError::Grid { task: spec.id.clone(), source })?;
            if spec.max_workers == 0 {
                return Err(PipelineError::ZeroMaxWorkers { task: spec.id.clone() });
            }
            if spec.timeout.is_zero() {
                return Err(PipelineError::ZeroTimeout { task: spec.id.clone() });
            }
            let mut upstream = Vec::with_capacity(spec.upstream.len());
            for up in &spec.upstream {
                let index = *by_id.get(up).ok_or_else(|| PipelineError::UnknownUpstream {
                    task: spec.id.clone(),
                    upstream: up.to_string(),
                    known: specs.iter().map(|s| s.id.as_str()).collect::<Vec<_>>().join(", "),
                })?;
                if !upstream.contains(&index) {
                    upstream.push(index);
                }
            }
            tasks.push(PipelineTask { spec: spec.clone(), grid, upstream, downstream: Vec::new() });
        }
        for position in 0..tasks.len() {
            for up in tasks[position].upstream.clone() {
                tasks[up.get()].downstream.push(TaskIndex(position as u32));
            }
        }
        let topological_order = topological_order(&tasks)?;
        let pipeline = Self { tasks, topological_order };
        pipeline.check_upstream_geometry()?;
        Ok(pipeline)
    }

    /// Refuses upstream links across dimensionalities and downstream blocks
    /// that read nothing their upstream task writes.
    fn check_upstream_geometry(&self) -> Result<(), PipelineError> {
        for task in &self.tasks {
            for &up in &task.upstream {
                let upstream = &self.tasks[up.get()];
                if upstream.grid.dims() != task.grid.dims() {
                    return Err(PipelineError::UpstreamDims {
                        task: task.spec.id.clone(),
                        upstream: upstream.spec.id.clone(),
                        dims: task.grid.dims(),
                        upstream_dims: upstream.grid.dims(),
                    });
                }
                let written = written_region(&upstream.grid);
                // Along each axis a block's read interval moves monotonically
                // with its index, so the blocks reading the written region
                // form a box: checking the first and last block of each axis
                // covers every block.
                let grid = &task.grid;
                let last = grid.grid_shape() - 1;
                for axis in 0..grid.dims() {
                    for end in [0, last[axis]] {
                        let mut k = Coordinate::zeros(grid.dims());
                        k.set(axis, end);
                        let read_roi = grid.read_roi(&k);
                        let overlaps = (read_roi.begin()[axis] < written.end()[axis])
                            && (written.begin()[axis] < read_roi.end()[axis]);
                        if !overlaps {
                            return Err(PipelineError::Unreachable {
                                task: task.spec.id.clone(),
                                upstream: upstream.spec.id.clone(),
                                read_roi,
                                upstream_written: written,
                            });
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The tasks, in the order given.
    pub fn tasks(&self) -> &[PipelineTask] {
        &self.tasks
    }

    /// One task.
    #[inline]
    pub fn task(&self, task: TaskIndex) -> &PipelineTask {
        &self.tasks[task.get()]
    }

    /// The number of tasks.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether the pipeline has no task (never true for a validated one).
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The index of the task with this id.
    pub fn task_index(&self, id: &str) -> Option<TaskIndex> {
        self.tasks.iter().position(|t| t.spec.id.as_str() == id).map(|p| TaskIndex(p as u32))
    }

    /// Tasks in topological order (upstream first), ties in the order given.
    pub fn topological_order(&self) -> &[TaskIndex] {
        &self.topological_order
    }

    /// The total number of blocks over all tasks.
    pub fn num_blocks(&self) -> u64 {
        self.tasks.iter().map(|t| t.grid.num_blocks()).sum()
    }

    /// Everything about one block.
    pub fn block(&self, key: BlockKey) -> Block {
        let grid = &self.task(key.task).grid;
        let k = grid.grid_index(key.index);
        self.block_at(key.task, k)
    }

    /// Everything about the block at grid index `k` of `task`.
    pub fn block_at(&self, task: TaskIndex, k: Coordinate) -> Block {
        let grid = &self.task(task).grid;
        Block {
            key: BlockKey { task, index: grid.dense_index(&k) },
            block_id: grid.block_id(&k),
            grid_index: k,
            level: grid.level(&k),
            read_roi: grid.read_roi(&k),
            write_roi: grid.write_roi(&k),
        }
    }

    /// The key of the block of `task` with Daisy id `block_id`, if it exists.
    pub fn key_of_id(&self, task: TaskIndex, block_id: BlockId) -> Option<BlockKey> {
        let grid = &self.task(task).grid;
        grid.grid_index_of_id(block_id).map(|k| BlockKey { task, index: grid.dense_index(&k) })
    }

    /// Calls `f` on every block this block waits for: its conflicting
    /// neighbours of the previous level and the blocks of upstream tasks
    /// whose write ROI intersects its read ROI. Stops when `f` breaks.
    pub fn try_for_each_upstream(
        &self,
        key: BlockKey,
        mut f: impl FnMut(BlockKey) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let k = self.task(key.task).grid.grid_index(key.index);
        self.try_for_each_upstream_at(key.task, &k, |up, _| f(up))
    }

    /// [`Pipeline::try_for_each_upstream`] for the block at grid index `k`,
    /// passing each upstream block's grid index along (no conversions on
    /// the scheduler's hot path).
    #[inline]
    pub fn try_for_each_upstream_at(
        &self,
        task_index: TaskIndex,
        k: &Coordinate,
        mut f: impl FnMut(BlockKey, Coordinate) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let task = self.task(task_index);
        let mut flow = ControlFlow::Continue(());
        task.grid.for_each_conflict_upstream(k, |n| {
            if flow.is_continue() {
                flow = f(BlockKey { task: task_index, index: task.grid.dense_index(&n) }, n);
            }
        });
        flow?;
        if task.upstream.is_empty() {
            return flow;
        }
        let read_roi = task.grid.read_roi(k);
        for &up in &task.upstream {
            let grid = &self.task(up).grid;
            grid.blocks_writing_into(&read_roi)
                .try_for_each(|n| f(BlockKey { task: up, index: grid.dense_index(&n) }, n))?;
        }
        ControlFlow::Continue(())
    }

    /// Calls `f` on every block that waits for this one: its conflicting
    /// neighbours of the next level and the blocks of downstream tasks
    /// whose read ROI intersects its write ROI.
    pub fn for_each_downstream(&self, key: BlockKey, mut f: impl FnMut(BlockKey)) {
        let k = self.task(key.task).grid.grid_index(key.index);
        self.for_each_downstream_at(key.task, &k, |down, _| f(down));
    }

    /// [`Pipeline::for_each_downstream`] for the block at grid index `k`,
    /// passing each downstream block's grid index along.
    #[inline]
    pub fn for_each_downstream_at(
        &self,
        task_index: TaskIndex,
        k: &Coordinate,
        mut f: impl FnMut(BlockKey, Coordinate),
    ) {
        let task = self.task(task_index);
        task.grid.for_each_conflict_downstream(k, |n| {
            f(BlockKey { task: task_index, index: task.grid.dense_index(&n) }, n);
        });
        if task.downstream.is_empty() {
            return;
        }
        // Daisy counts only the part of a write ROI inside the total write
        // ROI (an overhanging block writes nothing its downstream waits for
        // beyond it); this mirrors `blocks_writing_into`.
        let write_roi = task.grid.write_roi(k).intersect(&task.grid.total_write_roi());
        for &down in &task.downstream {
            let grid = &self.task(down).grid;
            grid.blocks_reading_from(&write_roi)
                .for_each(|n| f(BlockKey { task: down, index: grid.dense_index(&n) }, n));
        }
    }

    /// The upstream blocks of `key` as a list, sorted by block id then task
    /// (Daisy's order).
    pub fn upstream_blocks(&self, key: BlockKey) -> Vec<Block> {
        let mut blocks = Vec::new();
        let _ = self.try_for_each_upstream(key, |up| {
            blocks.push(self.block(up));
            ControlFlow::Continue(())
        });
        blocks.sort_by(|a, b| {
            (a.block_id, self.task(a.key.task).spec.id.as_str())
                .cmp(&(b.block_id, self.task(b.key.task).spec.id.as_str()))
        });
        blocks
    }

    /// The downstream blocks of `key`, sorted by block id then task.
    pub fn downstream_blocks(&self, key: BlockKey) -> Vec<Block> {
        let mut blocks = Vec::new();
        self.for_each_downstream(key, |down| blocks.push(self.block(down)));
        blocks.sort_by(|a, b| {
            (a.block_id, self.task(a.key.task).spec.id.as_str())
                .cmp(&(b.block_id, self.task(b.key.task).spec.id.as_str()))
        });
        blocks
    }
}

/// The region the blocks of a grid write, as far as downstream tasks see
/// it: the union of their write ROIs within the total write ROI.
pub(crate) fn written_region(grid: &BlockGrid) -> Roi {
    Roi::new(grid.total_write_roi().begin(), grid.grid_shape() * grid.write_shape())
        .intersect(&grid.total_write_roi())
}

/// Kahn's algorithm, taking ready tasks in the order given.
fn topological_order(tasks: &[PipelineTask]) -> Result<Vec<TaskIndex>, PipelineError> {
    let mut missing: Vec<usize> = tasks.iter().map(|t| t.upstream.len()).collect();
    let mut order = Vec::with_capacity(tasks.len());
    let mut placed = vec![false; tasks.len()];
    while order.len() < tasks.len() {
        let Some(next) = (0..tasks.len()).find(|&t| !placed[t] && missing[t] == 0) else {
            let tasks_left = (0..tasks.len())
                .filter(|&t| !placed[t])
                .map(|t| tasks[t].spec.id.clone())
                .collect();
            return Err(PipelineError::Cycle { tasks: tasks_left });
        };
        placed[next] = true;
        order.push(TaskIndex(next as u32));
        for down in &tasks[next].downstream {
            missing[down.get()] -= 1;
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Coordinate;

    fn spec(id: &str, upstream: &[&str]) -> TaskSpec {
        let roi = |o: i64, s: i64| Roi::new(Coordinate::from([o, o]), Coordinate::from([s, s]));
        let mut spec = TaskSpec::new(TaskId::new(id).unwrap(), roi(0, 12), roi(0, 4), roi(1, 2));
        spec.upstream = upstream.iter().map(|u| TaskId::new(*u).unwrap()).collect();
        spec
    }

    #[test]
    fn duplicate_unknown_and_cyclic_tasks_are_refused() {
        let err = Pipeline::new(vec![spec("a", &[]), spec("a", &[])]).unwrap_err();
        assert!(matches!(err, PipelineError::DuplicateTaskId { .. }));
        let err = Pipeline::new(vec![spec("a", &["nope"])]).unwrap_err();
        assert!(
            matches!(err, PipelineError::UnknownUpstream { ref upstream, .. } if upstream == "nope")
        );
        let err = Pipeline::new(vec![spec("a", &["c"]), spec("b", &["a"]), spec("c", &["b"])])
            .unwrap_err();
        assert!(matches!(err, PipelineError::Cycle { ref tasks } if tasks.len() == 3));
        assert!(err.to_string().contains("'a', 'b', 'c'"), "{err}");
        assert_eq!(Pipeline::new(vec![]).unwrap_err(), PipelineError::NoTasks);
    }

    #[test]
    fn bad_values_name_the_task_and_field() {
        let mut zero = spec("a", &[]);
        zero.max_workers = 0;
        assert!(matches!(Pipeline::new(vec![zero]), Err(PipelineError::ZeroMaxWorkers { .. })));
        let mut no_time = spec("a", &[]);
        no_time.timeout = std::time::Duration::ZERO;
        assert!(matches!(Pipeline::new(vec![no_time]), Err(PipelineError::ZeroTimeout { .. })));
        let mut flat = spec("b", &["a"]);
        flat.total_roi = Roi::new(Coordinate::from([0]), Coordinate::from([12]));
        flat.read_roi = Roi::new(Coordinate::from([0]), Coordinate::from([4]));
        flat.write_roi = Roi::new(Coordinate::from([1]), Coordinate::from([2]));
        let err = Pipeline::new(vec![spec("a", &[]), flat]).unwrap_err();
        assert!(matches!(err, PipelineError::UpstreamDims { dims: 1, upstream_dims: 2, .. }));
        let mut outside = spec("a", &[]);
        outside.write_roi = Roi::new(Coordinate::from([3, 3]), Coordinate::from([2, 2]));
        let err = Pipeline::new(vec![outside]).unwrap_err();
        assert!(matches!(
            err,
            PipelineError::Grid { source: GridError::WriteNotInRead { .. }, .. }
        ));
        assert!(err.to_string().starts_with("task 'a': write_roi"), "{err}");
    }

    #[test]
    fn topological_order_puts_upstream_first() {
        let pipeline =
            Pipeline::new(vec![spec("c", &["b"]), spec("a", &[]), spec("b", &["a"])]).unwrap();
        let order: Vec<&str> = pipeline
            .topological_order()
            .iter()
            .map(|&t| pipeline.task(t).spec.id.as_str())
            .collect();
        assert_eq!(order, ["a", "b", "c"]);
    }
}
