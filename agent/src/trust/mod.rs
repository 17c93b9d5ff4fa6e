//! Who may ask for what: the trust policy (DESIGN §4), the keys that sign
//! commands and receipts, and the globs that match resources and labels.

pub mod glob;
pub mod keys;
pub mod policy;
