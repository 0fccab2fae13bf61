//! The local build journal: one small JSON file per running build on this machine
//! (`$BAKE_STATE_DIR`, else `$XDG_STATE_HOME/bake/builds`, else `~/.local/state/bake/builds`),
//! naming the bake process that owns the build. A build killed on this machine (SIGKILL, OOM,
//! a reboot) is known dead at once: its pid is gone, or belongs to a process that started at
//! another time (pid reuse), or the machine booted since. Entries are removed when a build
//! ends with nothing left; `bake gc` removes the others once it has cleaned up after them.
//!
//! Builds started on another machine are judged by their lease instead (see [`super::lease`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    pub build_id: String,
    pub recipe: String,
    pub region: String,
    pub host: String,
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks after boot): tells a reused pid apart.
    pub pid_start: Option<u64>,
    /// `/proc/sys/kernel/random/boot_id`: a pid from an earlier boot is dead.
    pub boot_id: Option<String>,
    /// RFC 3339.
    pub started: String,
    /// `s3://bucket/prefix` locations the build stages objects under (SSM communicator).
    #[serde(default)]
    pub staging: Vec<String>,
    /// The build failed and `--on-error=abort` kept its builder to debug (the way in is in
    /// [`keep_dir`]); `bake gc --yes` removes it like any dead build's leftovers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kept: bool,
    /// The regions the build copies its image to (`[image] regions`): a killed build may leave
    /// half-made copies there, which `bake gc` in the build region also looks for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copy_regions: Vec<String>,
}

/// What the journal says about a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    Alive(String),
    Dead(String),
    /// Recorded by a bake on another machine (a shared home directory): the lease decides.
    Elsewhere(String),
}

pub fn dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("BAKE_STATE_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("builds"));
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("bake/builds"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".local/state/bake/builds"))
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

/// Start time of `pid` (field 22 of its stat line), if it exists and has not exited (a
/// killed process stays a zombie until its parent reaps it).
pub fn pid_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start(&stat)
}

/// The command name (field 2) may contain spaces and parentheses: count fields after the last ')'.
fn parse_start(stat: &str) -> Option<u64> {
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    // After ')' come fields 3.. : the state, and starttime (field 22) 19 fields later.
    if matches!(rest.next()?, "Z" | "X" | "x") {
        return None;
    }
    rest.nth(18)?.parse().ok()
}

impl Entry {
    /// The entry for a build this process runs.
    pub fn for_this_process(build_id: &str, recipe: &str, region: &str) -> Entry {
        let pid = std::process::id();
        Entry {
            build_id: build_id.to_string(),
            recipe: recipe.to_string(),
            region: region.to_string(),
            host: hostname(),
            pid,
            pid_start: pid_start(pid),
            boot_id: boot_id(),
            started: jiff::Timestamp::now().to_string(),
            staging: Vec::new(),
            kept: false,
            copy_regions: Vec::new(),
        }
    }

    /// Whether the build made (or may have made) something in `region`.
    pub fn touches(&self, region: &str) -> bool {
        self.region == region || self.copy_regions.iter().any(|r| r == region)
    }

    /// Alive, dead, or not ours to judge.
    pub fn judge(&self) -> Local {
        if self.host != hostname() {
            return Local::Elsewhere(format!("started on host {}", self.host));
        }
        if let (Some(then), Some(now)) = (&self.boot_id, boot_id())
            && *then != now
        {
            return Local::Dead(format!(
                "bake pid {} ran before this machine last booted",
                self.pid
            ));
        }
        if !Path::new("/proc/self/stat").exists() {
            return Local::Elsewhere("no /proc to check the process with".into());
        }
        match pid_start(self.pid) {
            None => Local::Dead(format!("bake process {} on this host is gone", self.pid)),
            Some(s) if self.pid_start.is_some_and(|want| want != s) => Local::Dead(format!(
                "bake process {} on this host is gone (the pid now belongs to another process)",
                self.pid
            )),
            Some(_) => Local::Alive(format!("bake process {} on this host is running", self.pid)),
        }
    }

    fn path_in(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.json", self.build_id))
    }

    /// Writes (or rewrites) the entry atomically.
    pub fn write(&self) -> std::io::Result<()> {
        let Some(dir) = dir() else { return Ok(()) };
        std::fs::create_dir_all(&dir)?;
        let path = self.path_in(&dir);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).unwrap_or_default())?;
        std::fs::rename(tmp, path)
    }
}

/// Removes a build's entry (done, or cleaned up after), and the way into its kept builder.
pub fn remove(build_id: &str) {
    if let Some(dir) = dir() {
        let _ = std::fs::remove_file(dir.join(format!("{build_id}.json")));
        let _ = std::fs::remove_dir_all(dir.join(build_id));
    }
}

/// Where a builder kept by `--on-error=abort` has its key and known_hosts files.
pub fn keep_dir(build_id: &str) -> Option<PathBuf> {
    dir().map(|d| d.join(build_id))
}

/// Marks the build's entry as touched now: called whenever the build is about to create, or
/// has just created, something. `bake gc` takes the entry's mtime as the time of the build's
/// newest resource, which EC2 may not list yet (eventual consistency).
pub fn touch(build_id: &str) {
    let Some(dir) = dir() else { return };
    if let Ok(f) = std::fs::File::options()
        .write(true)
        .open(dir.join(format!("{build_id}.json")))
    {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// When the build last touched its entry (see [`touch`]).
pub fn touched(build_id: &str) -> Option<std::time::SystemTime> {
    let dir = dir()?;
    std::fs::metadata(dir.join(format!("{build_id}.json")))
        .ok()?
        .modified()
        .ok()
}

pub fn read(build_id: &str) -> Option<Entry> {
    let dir = dir()?;
    let bytes = std::fs::read(dir.join(format!("{build_id}.json"))).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Every entry on this machine (unreadable files are skipped).
pub fn all() -> Vec<Entry> {
    let Some(dir) = dir() else { return Vec::new() };
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<Entry> = rd
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .collect();
    out.sort_by(|a, b| a.build_id.cmp(&b.build_id));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_odd_command_names() {
        let stat =
            "1234 (a b) c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start(stat), Some(987654));
        assert_eq!(parse_start(&stat.replace(") S ", ") Z ")), None);
        assert_eq!(parse_start("garbage"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_gone_or_reused_pid_is_dead() {
        let me = Entry::for_this_process("b-0000000001", "r", "us-east-1");
        assert!(matches!(me.judge(), Local::Alive(_)), "{:?}", me.judge());
        let reused = Entry {
            pid_start: me.pid_start.map(|s| s + 1),
            ..me.clone()
        };
        assert!(matches!(reused.judge(), Local::Dead(m) if m.contains("another process")));
        // pid_max is at most 2^22 on Linux
        let gone = Entry {
            pid: 4_194_304 + 17,
            ..me.clone()
        };
        assert!(matches!(gone.judge(), Local::Dead(_)));
        let rebooted = Entry {
            boot_id: Some("not-this-boot".into()),
            ..me.clone()
        };
        assert!(matches!(rebooted.judge(), Local::Dead(m) if m.contains("booted")));
        let other = Entry {
            host: "elsewhere.example".into(),
            ..me
        };
        assert!(matches!(other.judge(), Local::Elsewhere(_)));
    }
}
