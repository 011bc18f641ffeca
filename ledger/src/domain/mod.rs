//! Wallet domain (work in progress).
