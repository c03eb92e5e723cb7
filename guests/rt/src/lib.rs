//! Guest runtime.
#![no_std]
