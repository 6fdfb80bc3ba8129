//! eStargz (placeholder, being written).
