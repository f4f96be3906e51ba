//! A field of /proc/self/status (e.g. "VmHWM:", the peak RSS), as the kernel prints it.
pub fn proc_status(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l[field.len()..].trim().to_string())
        .unwrap_or_else(|| "?".into())
}

/// CPU seconds (user + system) used so far by this process's threads named `name`.
#[allow(dead_code)] // not every example reads it
pub fn thread_cpu_secs(name: &str) -> f64 {
    std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.trim() == name)
        })
        .filter_map(|task| stat_cpu_secs(&task.path().join("stat")))
        .sum()
}

/// CPU seconds (user + system) used so far by this whole process.
#[allow(dead_code)] // not every example reads it
pub fn process_cpu_secs() -> f64 {
    stat_cpu_secs(std::path::Path::new("/proc/self/stat")).unwrap_or(0.0)
}

/// utime + stime of a /proc stat file, in seconds.
fn stat_cpu_secs(path: &std::path::Path) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // the fields after the parenthesised name; utime and stime are 14th and 15th
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    Some((f[11].parse::<u64>().ok()? + f[12].parse::<u64>().ok()?) as f64 / 100.0)
}

/// How fast one core hashes right now: the machine's speed swings from one
/// minute to the next, and figures from runs at different speeds do not compare.
#[allow(dead_code)] // not every example prints it
pub fn sha256_speed() -> f64 {
    use sha2::Digest;
    let block = vec![0x5au8; 1 << 20];
    let t = std::time::Instant::now();
    let mut h = sha2::Sha256::new();
    for _ in 0..256 {
        h.update(&block);
    }
    std::hint::black_box(h.finalize());
    256.0 / t.elapsed().as_secs_f64()
}
