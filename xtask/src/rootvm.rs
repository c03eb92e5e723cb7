//! Builds the Linux Root VM (kernel, busybox, Lua, initramfs) from pinned Debian sources.
