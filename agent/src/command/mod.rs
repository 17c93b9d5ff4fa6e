//! What an operator asked for, and how it is refused: the signed envelope
//! (DESIGN §3), the strict payload inside it, and the stable reason codes
//! of every refusal.

pub mod envelope;
pub mod payload;
pub mod rejection;
