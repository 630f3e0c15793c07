//! Streams: the tasks that drive XML streams over sockets.
pub mod c2s;
pub mod csi;
pub mod sm;
pub mod transport;
