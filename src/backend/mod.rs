//! The reference ODFS dialog backend (spec §7). Built in its own issue.
