//! Builds the no_std test guests.
