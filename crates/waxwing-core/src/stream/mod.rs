//! Streams: the tasks that drive XML streams over sockets.
pub mod c2s;
pub mod component;
pub mod compress;
pub mod csi;
pub mod s2s_in;
pub mod s2s_out;
pub mod sm;
pub mod transport;
