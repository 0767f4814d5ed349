//! Reads and validates pipeline files, turning every problem into a message
//! that names the file, the place and the fix.

use std::path::Path;
use std::sync::Arc;

use daisy_core::{Pipeline, SpecError, parse_pipeline};

/// Marks an error as bad input (exit code 2) rather than a failed run.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// Reads, parses and validates a pipeline file.
pub fn load_pipeline(path: &Path) -> anyhow::Result<Arc<Pipeline>> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| BadInput(format!("cannot read pipeline file {}: {err}", path.display())))?;
    let specs = parse_pipeline(&text).map_err(|err| match err {
        SpecError::Syntax { message, line: Some(line), column: Some(column) } => {
            BadInput(format!("{}:{line}:{column}: {message}", path.display()))
        }
        other => BadInput(format!("{}: {other}", path.display())),
    })?;
    let pipeline =
        Pipeline::new(specs).map_err(|err| BadInput(format!("{}: {err}", path.display())))?;
    Ok(Arc::new(pipeline))
}
