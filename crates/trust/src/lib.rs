//! Trust (placeholder, being written).
