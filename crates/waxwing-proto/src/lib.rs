#![forbid(unsafe_code)]
pub mod bosh;
pub mod datetime;
pub mod framing;
pub mod jid;
pub mod lang;
pub mod ns;
pub mod payload;
pub mod sasl;
pub mod stanza;
pub mod xml;
