//! Interned names of clusters and rules, so a pin carries two `u32`s instead of two strings.
//!
//! A million live pins must fit in well under 200 MB; names repeat across all of them. The table
//! only grows (a name once seen keeps its id for the life of the process), and is bounded by the
//! number of distinct cluster and rule names ever configured. Interning happens when a config is
//! compiled; the hot path only reads, through one `ArcSwap` load.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;

/// An interned name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NameId(pub u32);

struct Table {
    ids: Mutex<HashMap<Arc<str>, u32>>,
    names: ArcSwap<Vec<Arc<str>>>,
}

fn table() -> &'static Table {
    static T: OnceLock<Table> = OnceLock::new();
    T.get_or_init(|| Table {
        ids: Mutex::new(HashMap::new()),
        names: ArcSwap::from_pointee(Vec::new()),
    })
}

/// The id of `name`, creating it on first use. Called on the config path, not per turn.
pub fn intern(name: &str) -> NameId {
    let t = table();
    let mut ids = t.ids.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(&id) = ids.get(name) {
        return NameId(id);
    }
    let arc: Arc<str> = Arc::from(name);
    let mut names = Vec::clone(&t.names.load());
    let id = names.len() as u32;
    names.push(arc.clone());
    t.names.store(Arc::new(names));
    ids.insert(arc, id);
    NameId(id)
}

/// The name behind an id (`"-"` for an id this process never made, e.g. from a foreign file).
pub fn name(id: NameId) -> Arc<str> {
    table()
        .names
        .load()
        .get(id.0 as usize)
        .cloned()
        .unwrap_or_else(|| Arc::from("-"))
}

/// Look a name up without creating it.
pub fn lookup(name: &str) -> Option<NameId> {
    let ids = table().ids.lock().unwrap_or_else(|p| p.into_inner());
    ids.get(name).map(|&i| NameId(i))
}
