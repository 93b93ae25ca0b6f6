//! Sans-IO Pleiades Wire Protocol codec (being written).
