//! Server (see below).
