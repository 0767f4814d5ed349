//! How a process names itself to the others of a run.

/// This host's name and a process name usable in worker ids and liveness
/// keys: `<host>-<pid>`, with every character outside `[A-Za-z0-9_-]` as
/// `-`.
pub fn process_identity() -> (String, String) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned());
    let clean: String = host
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '-' })
        .take(48)
        .collect();
    (host, format!("{clean}-{}", std::process::id()))
}
