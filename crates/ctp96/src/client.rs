//! Client (see below).
