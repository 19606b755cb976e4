//! `pins.snapshot`: the memory store's table kept on disk continuously, so that a crash
//! (`kill -9`, an OOM kill, node loss) loses at most the last half second of pin changes.
//!
//! **How it is written.** One dedicated thread (never the async runtime) wakes every
//! [`WRITE_EVERY`]; when the table (or an extra section) changed since the last write, it
//! writes the whole live table to `<file>.<pid>.tmp`, `fsync`s it, renames it over the file and
//! `fsync`s the directory. The table is copied out one shard at a time (the shard lock is held
//! for a copy of about 1/64 of the table, never across I/O) and streamed through a 256 KiB
//! buffer, so memory stays bounded by one shard's copy whatever the table's size. A turn pays
//! one relaxed atomic load (and a store once per write period) to mark the table changed.
//! On shutdown, after the listeners drained, the thread writes one last time and stops.
//!
//! Why a compact file by atomic rename and not a journal: the table is small per call (one
//! line of about 70 bytes), a rename can never leave a half-written file in place, and reading
//! it back needs no replay or compaction logic. The cost is writing the whole live table every
//! period while it changes; `benches/load.sh --snapshot` measures it per turn.
//!
//! **Who owns the file.** The process owns it from start: it reads it once, at start, writes
//! its own version at once (with the next sequence number) before it serves a turn, and from
//! then on only it writes it. Before every write it checks that the file on disk is still the
//! one it wrote last (same inode); if another process replaced it (two gateways on one file,
//! or an old one still draining during a rolling restart), it stops writing and says so rather
//! than put its older view over the other's. So a file from an earlier graceful stop can never
//! be restored over newer pins: the first write of the next process replaces it, and when that
//! write fails the file read is moved aside to `<file>.stale` so that no later start reads it.
//!
//! **Format** (version 2; version 1 was bare JSON lines of pins, still read):
//!
//! ```text
//! {"format":"graygate-pins","version":2,"seq":7,"pid":4242,"written_at_ms":1764583200000}
//! #section pins
//! ["1528780879-9581","canary","canary-tenants",3,1764583100000,1764584900000,false]
//! #end pins
//! #section <another>
//! <one JSON value per line>
//! #end <another>
//! #eof 1
//! ```
//!
//! A pin line is `[userid, cluster, rule, generation, created_at_ms, expires_at_ms, ending]`,
//! followed by `flags, epoch` when the call carries outcome facts or a rollout epoch (spec §11;
//! flags: 1 failed, 2 transferred), with wall-clock times, so a restart accounts for the time
//! the process was down. Sections other than `pins` belong to other parts of the gateway
//! ([`Section`]; the rollouts of §11 keep their state in `#section rollouts`, one JSON object
//! per rollout); a reader skips the ones it does not know. `#eof N` (N = number of sections)
//! marks a complete file.
//!
//! **Adding a section** (e.g. rollout state): implement [`Section`] (a name, a dirty flag the
//! writer takes, and `save` appending one JSON value per line), register it once with
//! `app.pin_file` → [`PinFile::add_section`] after `App::start`, and read the lines saved by
//! the previous process with [`PinFile::take_restored`] (same name) before using the state.
//! `take_dirty` should return true once at first so that the section is written even when
//! no pin changes. `pin_file` is `None` with the Redis store or without `pins.snapshot`.

use std::collections::HashMap;
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use serde::Deserialize;

use super::memory::MemoryStore;
use super::Pin;
use crate::clock::wall_ms;
use crate::ids as names;

/// How often the writer looks for changes (longer after a long write, see [`pause_after`]).
pub const WRITE_EVERY: Duration = Duration::from_millis(500);
/// The format version written.
pub const VERSION: u64 = 2;
const FORMAT: &str = "graygate-pins";

/// Another part of the gateway's state saved in the same file (e.g. rollouts).
///
/// Register it with [`PinFile::add_section`]; its lines are read back at start with
/// [`PinFile::take_restored`]. Every method is called on the writer thread: keep them short
/// and non-blocking (copy under a lock, no I/O).
pub trait Section: Send + Sync + 'static {
    /// `[a-z0-9_]+`, unique, not `pins`.
    fn name(&self) -> &'static str;
    /// True when something changed since the last call (the file is rewritten only when the
    /// table or some section changed).
    fn take_dirty(&self) -> bool;
    /// Append the section's lines: each one JSON value on one line (no `\n` inside).
    fn save(&self, out: &mut Vec<String>);
}

/// What a start found in the file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Restored {
    pub pins: usize,
    /// Expired pins and unreadable lines.
    pub skipped: usize,
    /// The sequence number of the file read (0: none).
    pub seq: u64,
    /// The format version read (0: no file).
    pub version: u64,
    /// False when the file had no `#eof` line (cut short: copied by hand, disk trouble).
    pub complete: bool,
}

/// The continuous writer of one `pins.snapshot` file.
pub struct PinFile {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

struct Shared {
    path: PathBuf,
    tmp: PathBuf,
    store: MemoryStore,
    state: Mutex<State>,
    wake: Condvar,
    sections: Mutex<Vec<Arc<dyn Section>>>,
    restored_sections: Mutex<HashMap<String, Vec<String>>>,
}

#[derive(Default)]
struct State {
    stop: bool,
    stopped: bool,
    seq: u64,
    /// The inode of the file we wrote last (or read at start); `None`: no file should exist.
    owned: Option<u64>,
    /// Another process replaced the file: we no longer write it.
    lost: bool,
    writes: u64,
    failures: u64,
    last_error: Option<String>,
    last_write_ms: u64,
    last_write_pins: usize,
    last_write_bytes: u64,
    last_write_took: Duration,
}

impl PinFile {
    /// Read `path` into `store` (once, at start), write this process's own version of it at
    /// once, and start the writer thread. Blocking: call it off the async runtime.
    pub fn open(path: &Path, store: MemoryStore) -> (Arc<PinFile>, Restored) {
        let tmp = sibling(path, &format!(".{}.tmp", std::process::id()));
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            tmp,
            store,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            sections: Mutex::new(Vec::new()),
            restored_sections: Mutex::new(HashMap::new()),
        });
        let (restored, sections, inode) = match read(path, &shared.store) {
            Ok(r) => r,
            Err(e) => {
                // Kept for the operator (a newer format after a downgrade, a damaged disk),
                // never read again, and not overwritten by this process's first write.
                let aside = sibling(path, ".unreadable");
                match std::fs::rename(path, &aside) {
                    Ok(()) => {
                        tracing::error!(file = %path.display(), moved_to = %aside.display(), error = %e, "could not read the pin snapshot; starting empty")
                    }
                    Err(_) => {
                        tracing::error!(file = %path.display(), error = %e, "could not read the pin snapshot; starting empty")
                    }
                }
                (Restored::default(), HashMap::new(), inode_of(path))
            }
        };
        if restored.version > 0 {
            if !restored.complete {
                tracing::warn!(file = %path.display(), "the pin snapshot has no end mark (cut short?); restored what it holds");
            }
            tracing::info!(file = %path.display(), restored = restored.pins, skipped = restored.skipped, seq = restored.seq, "pins restored");
        }
        *shared
            .restored_sections
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = sections;
        {
            let mut st = shared.lock();
            st.seq = restored.seq;
            st.owned = inode;
        }
        // Our own version at once: from now on the file on disk is never older than this
        // process's table as of the last write period.
        if let Err(e) = shared.write_once() {
            if inode.is_some() {
                let stale = sibling(path, ".stale");
                match std::fs::rename(path, &stale) {
                    Ok(()) => {
                        tracing::error!(file = %path.display(), moved_to = %stale.display(), error = %e, "could not write the pin snapshot; the file read was moved aside so that no later start restores it over newer pins")
                    }
                    Err(e2) => {
                        tracing::error!(file = %path.display(), error = %e, rename_error = %e2, "could not write the pin snapshot, nor move the file read aside")
                    }
                }
                shared.lock().owned = None;
            }
        }
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("graygate-pinfile".into())
            .spawn(move || worker.run())
            .map_err(|e| tracing::error!(error = %e, "cannot start the pin snapshot writer"))
            .ok();
        (
            Arc::new(PinFile {
                shared,
                thread: Mutex::new(thread),
            }),
            restored,
        )
    }

    /// Save `section` in the file from the next write on.
    pub fn add_section(&self, section: Arc<dyn Section>) {
        self.shared
            .sections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(section);
    }

    /// The lines of section `name` read at start (once; `None` when the file had none).
    pub fn take_restored(&self, name: &str) -> Option<Vec<String>> {
        self.shared
            .restored_sections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
    }

    /// Write the file now if anything changed (tests; the thread does it every period).
    pub fn flush(&self) -> std::io::Result<()> {
        if self.shared.lock().stopped {
            return Ok(());
        }
        self.shared.write_if_dirty().map(|_| ())
    }

    /// Write one last time and stop the thread. Waits at most `limit` (a blocked disk must not
    /// hold the exit); blocking, so call it off the runtime.
    pub fn finish(&self, limit: Duration) -> bool {
        {
            let mut st = self.shared.lock();
            st.stop = true;
        }
        self.shared.wake.notify_all();
        let end = Instant::now() + limit;
        let mut st = self.shared.lock();
        while !st.stopped {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self
                .shared
                .wake
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(st);
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
        true
    }

    /// For `/admin/config`.
    pub fn view(&self) -> serde_json::Value {
        let st = self.shared.lock();
        let at = |ms: u64| {
            (ms > 0).then(|| {
                humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms))
                    .to_string()
            })
        };
        serde_json::json!({
            "file": self.shared.path.display().to_string(),
            "state": if st.lost { "lost" } else if st.failures > 0 && st.last_error.is_some() { "failing" } else { "ok" },
            "seq": st.seq,
            "writes": st.writes,
            "failures": st.failures,
            "last_error": st.last_error,
            "last_write_at": at(st.last_write_ms),
            "last_write_pins": st.last_write_pins,
            "last_write_bytes": st.last_write_bytes,
            "last_write_ms": st.last_write_took.as_secs_f64() * 1000.0,
        })
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self) {
        loop {
            {
                let st = self.lock();
                let pause = pause_after(st.last_write_took);
                let (st, _) = self
                    .wake
                    .wait_timeout_while(st, pause, |s| !s.stop)
                    .unwrap_or_else(|p| p.into_inner());
                if st.stop {
                    drop(st);
                    let r = self.write_once();
                    let mut st = self.lock();
                    if let Ok(n) = r {
                        if !st.lost {
                            tracing::info!(file = %self.path.display(), pins = n, "pins saved");
                        }
                    }
                    st.stopped = true;
                    drop(st);
                    self.wake.notify_all();
                    return;
                }
            }
            let _ = self.write_if_dirty();
        }
    }

    /// Write when the table or a section changed; `Ok(None)` when nothing did.
    fn write_if_dirty(&self) -> std::io::Result<Option<usize>> {
        let mut dirty = self.store.take_dirty();
        for s in self
            .sections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            dirty |= s.take_dirty();
        }
        if !dirty {
            return Ok(None);
        }
        match self.write_once() {
            Ok(n) => Ok(Some(n)),
            Err(e) => {
                // Try again next period even if nothing else changes.
                self.store.mark_dirty();
                Err(e)
            }
        }
    }

    /// Write the whole file once (unless another process took it over). Returns the pins
    /// written.
    fn write_once(&self) -> std::io::Result<usize> {
        let (seq, owned) = {
            let st = self.lock();
            if st.lost {
                return Ok(0);
            }
            (st.seq + 1, st.owned)
        };
        let started = Instant::now();
        let result = self.write_file(seq, owned);
        let mut st = self.lock();
        match &result {
            Ok((pins, bytes, inode)) => {
                st.seq = seq;
                st.owned = Some(*inode);
                st.writes += 1;
                st.last_error = None;
                st.last_write_ms = wall_ms();
                st.last_write_pins = *pins;
                st.last_write_bytes = *bytes;
                st.last_write_took = started.elapsed();
            }
            Err(WriteError::Lost(msg)) => {
                st.lost = true;
                st.last_error = Some(msg.clone());
                tracing::error!(file = %self.path.display(), "{msg}; this process no longer writes it");
            }
            Err(WriteError::Io(e)) => {
                st.failures += 1;
                let msg = e.to_string();
                if st.last_error.as_deref() != Some(msg.as_str()) {
                    tracing::error!(file = %self.path.display(), error = %e, "could not write the pin snapshot");
                }
                st.last_error = Some(msg);
            }
        }
        match result {
            Ok((pins, _, _)) => Ok(pins),
            Err(WriteError::Lost(msg)) => Err(std::io::Error::other(msg)),
            Err(WriteError::Io(e)) => Err(e),
        }
    }

    fn write_file(&self, seq: u64, owned: Option<u64>) -> Result<(usize, u64, u64), WriteError> {
        let on_disk = inode_of(&self.path);
        if on_disk.is_some() && on_disk != owned {
            return Err(WriteError::Lost(
                "the pin snapshot was replaced by another process".into(),
            ));
        }
        let file = std::fs::File::create(&self.tmp)?;
        let mut out = Counting {
            inner: BufWriter::with_capacity(256 * 1024, file),
            bytes: 0,
        };
        let header = serde_json::json!({
            "format": FORMAT,
            "version": VERSION,
            "seq": seq,
            "pid": std::process::id(),
            "written_at_ms": wall_ms(),
        });
        writeln!(out, "{header}")?;
        writeln!(out, "#section pins")?;
        let pins = write_pins(&self.store, &mut out)?;
        writeln!(out, "#end pins")?;
        let mut count = 1;
        let sections: Vec<_> = self
            .sections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut lines = Vec::new();
        for s in sections {
            lines.clear();
            s.save(&mut lines);
            writeln!(out, "#section {}", s.name())?;
            for l in &lines {
                if l.contains('\n') || l.starts_with('#') {
                    continue;
                }
                writeln!(out, "{l}")?;
            }
            writeln!(out, "#end {}", s.name())?;
            count += 1;
        }
        writeln!(out, "#eof {count}")?;
        let bytes = out.bytes;
        let file = out.inner.into_inner().map_err(|e| e.into_error())?;
        file.sync_data()?;
        let inode = file_inode(&file)?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok((pins, bytes, inode))
    }
}

/// The pause between looks: [`WRITE_EVERY`], longer after a long write (so that a large table
/// costs the writer at most about a quarter of a core), but never so long that a change waits
/// more than a second for its write (plus the write itself).
fn pause_after(last_write: Duration) -> Duration {
    (last_write * 3)
        .max(WRITE_EVERY)
        .min(Duration::from_secs(1).saturating_sub(last_write))
        .max(Duration::from_millis(100))
}

/// `path` with `suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

enum WriteError {
    Lost(String),
    Io(std::io::Error),
}

impl From<std::io::Error> for WriteError {
    fn from(e: std::io::Error) -> Self {
        WriteError::Io(e)
    }
}

struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The live pins, one shard at a time (copied out, then written with no lock held).
fn write_pins(store: &MemoryStore, out: &mut impl Write) -> std::io::Result<usize> {
    let wall = wall_ms();
    let mut n = 0;
    // Names by id, looked up once per write rather than once per pin.
    let mut names_seen: Vec<Option<std::sync::Arc<str>>> = Vec::new();
    let mut name = |id: names::NameId| -> std::sync::Arc<str> {
        let i = id.0 as usize;
        if i >= names_seen.len() {
            names_seen.resize(i + 1, None);
        }
        names_seen[i].get_or_insert_with(|| names::name(id)).clone()
    };
    let mut line = String::with_capacity(160);
    for i in 0..store.shard_count() {
        for (userid, pin, left) in store.live_in_shard(i) {
            let (cluster, rule) = (name(pin.cluster), name(pin.rule));
            line.clear();
            line.push('[');
            json_str(&mut line, &userid);
            line.push(',');
            json_str(&mut line, &cluster);
            line.push(',');
            json_str(&mut line, &rule);
            let mut num = itoa::Buffer::new();
            for v in [
                pin.generation,
                pin.created_at_ms,
                wall + left.as_millis() as u64,
            ] {
                line.push(',');
                line.push_str(num.format(v));
            }
            line.push_str(if pin.ending { ",true" } else { ",false" });
            // Outcome facts and the rollout epoch (spec §11), only when the call has them.
            let flags = u8::from(pin.failed) | (u8::from(pin.transferred) << 1);
            if flags != 0 || pin.epoch != 0 {
                line.push(',');
                line.push_str(num.format(flags));
                line.push(',');
                line.push_str(num.format(pin.epoch));
            }
            line.push_str("]\n");
            out.write_all(line.as_bytes())?;
            n += 1;
        }
    }
    Ok(n)
}

/// A JSON string literal. Call ids and names almost never need escaping: copied whole then;
/// anything else goes through serde_json.
fn json_str(s: &mut String, v: &str) {
    if v.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        s.push('"');
        s.push_str(v);
        s.push('"');
    } else if let Ok(quoted) = serde_json::to_string(v) {
        s.push_str(&quoted);
    }
}

#[derive(Deserialize)]
struct PinLine(String, String, String, u64, u64, u64, bool);

/// A pin line with the outcome flags and the rollout epoch.
#[derive(Deserialize)]
struct PinLineFacts(String, String, String, u64, u64, u64, bool, u8, u64);

/// Version 1: one object per line, no header.
#[derive(Deserialize)]
struct V1Pin {
    userid: String,
    cluster: String,
    rule: String,
    generation: u64,
    created_at_ms: u64,
    expires_at_ms: u64,
    ending: bool,
}

#[derive(Deserialize)]
struct Header {
    format: String,
    version: u64,
    #[serde(default)]
    seq: u64,
}

type ReadOutcome = (Restored, HashMap<String, Vec<String>>, Option<u64>);

/// Read a snapshot file into `store`. A missing file is an empty table.
fn read(path: &Path, store: &MemoryStore) -> std::io::Result<ReadOutcome> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Restored::default(), HashMap::new(), None))
        }
        Err(e) => return Err(e),
    };
    let inode = file_inode(&file).ok();
    let mut lines = std::io::BufReader::with_capacity(256 * 1024, file).lines();
    let wall = wall_ms();
    let mut r = Restored::default();
    let mut sections = HashMap::new();
    let Some(first) = lines.next().transpose()? else {
        return Ok((r, sections, inode));
    };
    let restore = |r: &mut Restored,
                   userid: &str,
                   cluster: &str,
                   rule: &str,
                   generation,
                   created_at_ms,
                   expires_at_ms: u64,
                   ending,
                   (flags, epoch): (u8, u64)| {
        if expires_at_ms <= wall || userid.is_empty() || userid.len() > 64 {
            r.skipped += 1;
            return;
        }
        // Names this gateway ran; past the table's ceiling (ids.rs) the pin is skipped.
        let (Some(cluster), Some(rule)) = (names::try_intern(cluster), names::try_intern(rule))
        else {
            r.skipped += 1;
            return;
        };
        let pin = Pin {
            cluster,
            rule,
            generation,
            created_at_ms,
            ending,
            epoch,
            failed: flags & 1 != 0,
            transferred: flags & 2 != 0,
        };
        store.restore(userid, pin, Duration::from_millis(expires_at_ms - wall));
        r.pins += 1;
    };
    match serde_json::from_str::<Header>(&first) {
        Ok(h) if h.format == FORMAT => {
            if h.version != VERSION {
                return Err(std::io::Error::other(format!(
                    "format version {} (this build reads 1 and {VERSION})",
                    h.version
                )));
            }
            r.version = h.version;
            r.seq = h.seq;
            let mut current: Option<String> = None;
            for line in lines {
                let line = line?;
                if let Some(name) = line.strip_prefix("#section ") {
                    current = Some(name.trim().to_string());
                } else if line.starts_with("#end ") {
                    current = None;
                } else if line.starts_with("#eof") {
                    r.complete = true;
                    break;
                } else if line.trim().is_empty() {
                } else {
                    match current.as_deref() {
                        Some("pins") => match serde_json::from_str::<PinLine>(&line) {
                            Ok(PinLine(u, c, rule, g, created, exp, ending)) => {
                                restore(&mut r, &u, &c, &rule, g, created, exp, ending, (0, 0))
                            }
                            Err(_) => match serde_json::from_str::<PinLineFacts>(&line) {
                                Ok(PinLineFacts(u, c, rule, g, created, exp, ending, f, e)) => {
                                    restore(&mut r, &u, &c, &rule, g, created, exp, ending, (f, e))
                                }
                                Err(_) => r.skipped += 1,
                            },
                        },
                        Some(other) => sections
                            .entry(other.to_string())
                            .or_insert_with(Vec::new)
                            .push(line),
                        None => r.skipped += 1,
                    }
                }
            }
        }
        _ => {
            // Version 1 (before the header): JSON lines of pins, the first one included.
            r.version = 1;
            r.complete = true;
            for line in std::iter::once(Ok(first)).chain(lines) {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<V1Pin>(&line) {
                    Ok(p) => restore(
                        &mut r,
                        &p.userid,
                        &p.cluster,
                        &p.rule,
                        p.generation,
                        p.created_at_ms,
                        p.expires_at_ms,
                        p.ending,
                        (0, 0),
                    ),
                    Err(_) => r.skipped += 1,
                }
            }
        }
    }
    Ok((r, sections, inode))
}

#[cfg(unix)]
fn file_inode(f: &std::fs::File) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(f.metadata()?.ino())
}

#[cfg(not(unix))]
fn file_inode(_f: &std::fs::File) -> std::io::Result<u64> {
    Ok(0)
}

fn inode_of(path: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| m.ino())
    }
    #[cfg(not(unix))]
    {
        std::fs::metadata(path).ok().map(|_| 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::pins::{PinStore, ReleaseReason};

    fn pin(cluster: &str) -> Pin {
        Pin {
            cluster: names::intern(cluster),
            rule: names::intern("r"),
            generation: 1,
            created_at_ms: 5,
            ending: false,
            epoch: 0,
            failed: false,
            transferred: false,
        }
    }

    fn text(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    #[tokio::test]
    async fn round_trip_with_header_sections_and_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.snapshot");
        let s = MemoryStore::new(Metrics::new());
        let (f, r) = PinFile::open(&path, s.clone());
        assert_eq!(r, Restored::default());
        for i in 0..100 {
            s.create(&format!("u{i}"), pin("canary"), Duration::from_secs(60))
                .await;
        }
        s.create("q\"\n", pin("stable"), Duration::from_secs(60))
            .await;
        assert!(s.release("u0", ReleaseReason::Admin).await);
        f.flush().unwrap();
        assert!(f.finish(Duration::from_secs(5)));
        let t = text(&path);
        let header: serde_json::Value = serde_json::from_str(t.lines().next().unwrap()).unwrap();
        assert_eq!(header["format"], "graygate-pins");
        assert_eq!(header["version"], 2);
        // open wrote seq 1, flush 2, finish 3.
        assert_eq!(header["seq"], 3);
        assert!(t.ends_with("#eof 1\n"), "{t}");

        let s2 = MemoryStore::new(Metrics::new());
        let (f2, r2) = PinFile::open(&path, s2.clone());
        assert_eq!(
            (r2.pins, r2.skipped, r2.seq, r2.complete),
            (100, 0, 3, true)
        );
        assert!(s2.peek("u0").await.is_none());
        assert_eq!(
            &*names::name(s2.peek("u7").await.unwrap().cluster),
            "canary"
        );
        assert_eq!(
            &*names::name(s2.peek("q\"\n").await.unwrap().cluster),
            "stable"
        );
        // The file read was replaced at once by this process's own version.
        let h: serde_json::Value =
            serde_json::from_str(text(&path).lines().next().unwrap()).unwrap();
        assert_eq!(h["seq"], 4);
        assert!(f2.finish(Duration::from_secs(5)));
    }

    #[tokio::test]
    async fn version_1_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.jsonl");
        let exp = wall_ms() + 60_000;
        std::fs::write(&path, format!("{{\"userid\":\"a\",\"cluster\":\"canary\",\"rule\":\"r\",\"generation\":2,\"created_at_ms\":1,\"expires_at_ms\":{exp},\"ending\":false}}\n{{\"userid\":\"b\",\"cluster\":\"canary\",\"rule\":\"r\",\"generation\":2,\"created_at_ms\":1,\"expires_at_ms\":1,\"ending\":false}}\nnot json\n")).unwrap();
        let s = MemoryStore::new(Metrics::new());
        let (f, r) = PinFile::open(&path, s.clone());
        assert_eq!((r.pins, r.skipped, r.version), (1, 2, 1));
        assert!(s.peek("a").await.is_some());
        assert!(text(&path).starts_with("{\"format\":\"graygate-pins\""));
        f.finish(Duration::from_secs(5));
    }

    #[tokio::test]
    async fn an_unreadable_file_is_moved_aside_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.snapshot");
        let future = "{\"format\":\"graygate-pins\",\"version\":9,\"seq\":4}\n#eof 0\n";
        std::fs::write(&path, future).unwrap();
        let (f, r) = PinFile::open(&path, MemoryStore::new(Metrics::new()));
        assert_eq!(r.pins, 0);
        assert_eq!(text(&dir.path().join("pins.snapshot.unreadable")), future);
        assert!(text(&path).contains("\"version\":2"));
        f.finish(Duration::from_secs(5));
    }

    struct Extra(std::sync::atomic::AtomicBool);
    impl Section for Extra {
        fn name(&self) -> &'static str {
            "rollouts"
        }
        fn take_dirty(&self) -> bool {
            self.0.swap(false, std::sync::atomic::Ordering::Relaxed)
        }
        fn save(&self, out: &mut Vec<String>) {
            out.push(r#"{"name":"r1","step":2}"#.into());
        }
    }

    #[tokio::test]
    async fn extra_sections_are_saved_and_handed_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.snapshot");
        let s = MemoryStore::new(Metrics::new());
        let (f, _) = PinFile::open(&path, s.clone());
        f.add_section(Arc::new(Extra(true.into())));
        assert_eq!(f.flush().ok(), Some(()));
        assert!(text(&path)
            .contains("#section rollouts\n{\"name\":\"r1\",\"step\":2}\n#end rollouts\n#eof 2\n"));
        f.finish(Duration::from_secs(5));
        let (f2, _) = PinFile::open(&path, MemoryStore::new(Metrics::new()));
        assert_eq!(
            f2.take_restored("rollouts"),
            Some(vec![r#"{"name":"r1","step":2}"#.to_string()])
        );
        assert_eq!(f2.take_restored("rollouts"), None);
        f2.finish(Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_file_replaced_by_another_process_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.snapshot");
        let s = MemoryStore::new(Metrics::new());
        let (f, _) = PinFile::open(&path, s.clone());
        // A second gateway starts on the same file and writes its own version.
        let other = MemoryStore::new(Metrics::new());
        other
            .create("newer", pin("stable"), Duration::from_secs(60))
            .await;
        let (g, r) = PinFile::open(&path, other.clone());
        assert_eq!(r.pins, 0);
        // The first one's later writes (and its graceful stop) must not put its older view
        // over the other's.
        s.create("older", pin("canary"), Duration::from_secs(60))
            .await;
        let _ = f.flush();
        f.finish(Duration::from_secs(5));
        assert_eq!(f.view()["state"], "lost");
        let t = text(&path);
        assert!(t.contains("\"newer\"") && !t.contains("\"older\""), "{t}");
        g.finish(Duration::from_secs(5));
    }

    #[test]
    fn pauses() {
        let ms = Duration::from_millis;
        assert_eq!(pause_after(ms(5)), WRITE_EVERY);
        assert_eq!(pause_after(ms(200)), ms(600));
        assert_eq!(pause_after(ms(400)), ms(600));
        assert_eq!(pause_after(ms(950)), ms(100));
    }

    #[tokio::test]
    async fn writes_only_when_something_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.snapshot");
        let s = MemoryStore::new(Metrics::new());
        let (f, _) = PinFile::open(&path, s.clone());
        let w = f.view()["writes"].as_u64().unwrap();
        f.flush().unwrap();
        assert_eq!(f.view()["writes"].as_u64().unwrap(), w, "nothing changed");
        s.create("a", pin("canary"), Duration::from_secs(60)).await;
        f.flush().unwrap();
        assert_eq!(f.view()["writes"].as_u64().unwrap(), w + 1);
        // A turn that only refreshes the pin changes its deadline: written too.
        s.get("a", Duration::from_secs(60)).await;
        f.flush().unwrap();
        assert_eq!(f.view()["writes"].as_u64().unwrap(), w + 2);
        f.finish(Duration::from_secs(5));
    }
}
