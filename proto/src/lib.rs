//! Pleiades wire contracts: the protobuf messages of every service and the sans-IO codec of the
//! Pleiades Wire Protocol (PWP). See `WIRE.md` beside this crate for the byte-level table.

pub mod wire;
