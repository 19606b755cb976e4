//! Interned names of clusters and rules, so a pin carries two `u32`s instead of two strings.
//!
//! A million live pins must fit in well under 200 MB; names repeat across all of them.
//!
//! # Reading is a lock-free load
//!
//! The names live in an append-only table of chunks that never move: chunk `k` holds
//! `FIRST_CHUNK << k` slots and is allocated when the first name lands in it. [`name`] is two
//! atomic loads (the chunk, the slot) and an `Arc` clone: no lock, no copy, on the turn path.
//! Interning takes one mutex (the name → id map) on the config path, and an id is published
//! (its slot filled) before it is handed out, so a reader never meets an id whose slot is empty.
//!
//! # Writing is linear
//!
//! A new name costs one map insert and one slot write (the old table copied itself whole for
//! every new name: a 40,000-rule file took seconds). [`intern_all`] interns a compile's names
//! under one lock acquisition, all or none.
//!
//! # Bounded by the names in use, with a ceiling
//!
//! An id is never reused: pins (up to `pins.max_pins`, for as long as a call lasts), the pin
//! snapshot, metric series and retired clusters hold ids without a count of who holds them, so
//! reclaiming one could make an old pin name a different cluster. Instead, nothing that is not
//! a name in use adds to the table: a compile interns its names only when it succeeds (a
//! failed reload, with any number of made-up names, adds nothing), `check`/`explain`/`diff`
//! run in their own process, and a name read back from Redis or the pin snapshot names a
//! cluster or rule some replica runs. The table is then as large as the distinct names the
//! configs of this process's life have had, and [`MAX_NAMES`] is the ceiling that holds even
//! against a generator renaming every rule on every reload: past it a reload is refused with
//! a clear error (the running config stays; a restart starts a fresh table), and a pin read
//! back with a name that does not fit is treated as unreadable. `/admin/config` shows the
//! table's size (`name_table`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// An interned name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NameId(pub u32);

/// Slots of the first chunk; each next chunk doubles.
const FIRST_CHUNK_BITS: u32 = 10;
const FIRST_CHUNK: usize = 1 << FIRST_CHUNK_BITS;
const CHUNKS: usize = 10;

/// The most distinct names one process interns (1,047,552: ten chunks, 1,024 to 524,288
/// slots). About 100 bytes a name (slot, string, map entry): some 100 MB at the ceiling, which
/// only a generator renaming thousands of rules on every reload reaches.
pub const MAX_NAMES: usize = FIRST_CHUNK * ((1 << CHUNKS) - 1);

/// The name of id 0, given for an id this process never made (e.g. from a foreign file).
const UNKNOWN: &str = "-";

/// The table is full: `adding` new names do not fit beside the `held` ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableFull {
    pub held: usize,
    pub adding: usize,
}

impl std::fmt::Display for TableFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "this file adds {} new cluster/rule names to the {} this process has held since it started; \
             the most is {MAX_NAMES} (names are never reused while pins may name them): restart graygate \
             to start with only the names in use, or rename fewer rules per reload",
            self.adding, self.held
        )
    }
}

type Chunk = Box<[OnceLock<Arc<str>>]>;

struct Table {
    /// Writers only.
    ids: Mutex<HashMap<Arc<str>, u32>>,
    /// Ids below this are published.
    len: AtomicU32,
    chunks: [OnceLock<Chunk>; CHUNKS],
}

fn table() -> &'static Table {
    static T: OnceLock<Table> = OnceLock::new();
    T.get_or_init(|| {
        let t = Table {
            ids: Mutex::new(HashMap::new()),
            len: AtomicU32::new(0),
            chunks: Default::default(),
        };
        {
            let mut ids = t.ids.lock().unwrap_or_else(|p| p.into_inner());
            push(&t, &mut ids, UNKNOWN);
        }
        t
    })
}

/// The chunk and the slot in it of an id.
fn place(id: u32) -> (usize, usize) {
    let n = id as usize + FIRST_CHUNK;
    let k = (usize::BITS - 1 - n.leading_zeros()) as usize - FIRST_CHUNK_BITS as usize;
    (k, n - (FIRST_CHUNK << k))
}

/// Append `name` (not yet in `ids`, and the table not full): fill its slot, then publish it.
fn push(t: &Table, ids: &mut HashMap<Arc<str>, u32>, name: &str) -> u32 {
    let id = t.len.load(Ordering::Relaxed);
    let (k, i) = place(id);
    let chunk = t.chunks[k].get_or_init(|| {
        (0..FIRST_CHUNK << k)
            .map(|_| OnceLock::new())
            .collect::<Vec<_>>()
            .into_boxed_slice()
    });
    let arc: Arc<str> = Arc::from(name);
    let _ = chunk[i].set(arc.clone());
    t.len.store(id + 1, Ordering::Release);
    ids.insert(arc, id);
    id
}

/// The ids of `names`, interning the new ones: all of them, or none when they do not fit
/// under [`MAX_NAMES`]. One lock acquisition, linear in the number of names.
pub fn intern_all<'a>(
    names: impl IntoIterator<Item = &'a str> + Clone,
) -> Result<Vec<NameId>, TableFull> {
    let t = table();
    let mut ids = t.ids.lock().unwrap_or_else(|p| p.into_inner());
    let mut fresh: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for n in names.clone() {
        if !ids.contains_key(n) {
            fresh.insert(n);
        }
    }
    let held = ids.len();
    if held + fresh.len() > MAX_NAMES {
        return Err(TableFull {
            held,
            adding: fresh.len(),
        });
    }
    Ok(names
        .into_iter()
        .map(|n| match ids.get(n) {
            Some(&id) => NameId(id),
            None => NameId(push(t, &mut ids, n)),
        })
        .collect())
}

/// The id of `name`, interning it if there is room; `None` past [`MAX_NAMES`].
pub fn try_intern(name: &str) -> Option<NameId> {
    intern_all([name]).ok().map(|v| v[0])
}

/// The id of `name`, interning it if there is room; past [`MAX_NAMES`], the id of `-` (the
/// name of what this process does not know). For names already interned by a compile and for
/// tests; the config path uses [`intern_all`], readers of stored pins [`try_intern`].
pub fn intern(name: &str) -> NameId {
    try_intern(name).unwrap_or(NameId(0))
}

/// The name behind an id (`"-"` for an id this process never made, e.g. from a foreign file).
/// Lock-free: safe on the turn path.
pub fn name(id: NameId) -> Arc<str> {
    let t = table();
    let found = (id.0 < t.len.load(Ordering::Acquire))
        .then(|| {
            let (k, i) = place(id.0);
            t.chunks[k].get()?.get(i)?.get().cloned()
        })
        .flatten();
    found.unwrap_or_else(|| Arc::from(UNKNOWN))
}

/// Look a name up without creating it.
pub fn lookup(name: &str) -> Option<NameId> {
    let ids = table().ids.lock().unwrap_or_else(|p| p.into_inner());
    ids.get(name).map(|&i| NameId(i))
}

/// How many names the table holds (`/admin/config` `name_table.names`).
pub fn len() -> usize {
    table().len.load(Ordering::Acquire) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_cover_the_chunks_without_gaps() {
        assert_eq!(place(0), (0, 0));
        assert_eq!(place(FIRST_CHUNK as u32 - 1), (0, FIRST_CHUNK - 1));
        assert_eq!(place(FIRST_CHUNK as u32), (1, 0));
        assert_eq!(place(3 * FIRST_CHUNK as u32), (2, 0));
        let (k, i) = place(MAX_NAMES as u32 - 1);
        assert_eq!((k, i), (CHUNKS - 1, (FIRST_CHUNK << (CHUNKS - 1)) - 1));
    }

    #[test]
    fn interning_is_stable_and_names_come_back() {
        let a = intern_all(["ids-test-a", "ids-test-b", "ids-test-a"]).unwrap();
        assert_eq!(a[0], a[2]);
        assert_ne!(a[0], a[1]);
        assert_eq!(&*name(a[1]), "ids-test-b");
        assert_eq!(lookup("ids-test-a"), Some(a[0]));
        assert_eq!(intern("ids-test-b"), a[1]);
        assert_eq!(&*name(NameId(u32::MAX)), "-");
        // Many names: across chunk boundaries, each one its own id and name.
        let many: Vec<String> = (0..5000).map(|i| format!("ids-test-many-{i}")).collect();
        let ids = intern_all(many.iter().map(String::as_str)).unwrap();
        for (n, id) in many.iter().zip(&ids) {
            assert_eq!(&*name(*id), n.as_str());
        }
    }

    #[test]
    fn a_batch_past_the_ceiling_interns_nothing() {
        let before = len();
        let huge: Vec<String> = (0..MAX_NAMES + 1)
            .map(|i| format!("ids-test-huge-{i}"))
            .collect();
        let e = intern_all(huge.iter().map(String::as_str)).unwrap_err();
        assert!(e.adding > MAX_NAMES - e.held, "{e:?}");
        assert!(e.to_string().contains("restart graygate"), "{e}");
        assert_eq!(
            lookup("ids-test-huge-0"),
            None,
            "nothing of a refused batch is added"
        );
        assert_eq!(lookup(&format!("ids-test-huge-{MAX_NAMES}")), None);
        assert!(len() >= before);
    }
}
