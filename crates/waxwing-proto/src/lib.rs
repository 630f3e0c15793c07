#![forbid(unsafe_code)]
pub mod jid;
pub mod lang;
pub mod ns;
pub mod sasl;
pub mod stanza;
pub mod xml;
