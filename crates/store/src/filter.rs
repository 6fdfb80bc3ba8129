//! containerd filter syntax (placeholder, being written).
