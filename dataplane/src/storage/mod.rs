//! Node storage (being written).
