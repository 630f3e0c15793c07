//! Typed payloads, one file per XEP, named by the XEP's short name.

pub mod extdisco;
pub mod rsm;
