//! Text of bounded length without an allocator: a [`Line`] of `N` bytes, filled with
//! `write!` or [`fmt`]; what does not fit is cut.

/// Up to `N` bytes of text; bytes past the end are dropped.
pub struct Line<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Line<N> {
    /// Empty line.
    pub const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
        }
    }

    /// The bytes written so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// As text (lossy: invalid UTF-8 gives "?").
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(self.bytes()).unwrap_or("?")
    }

    /// Empties it.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends one byte (dropped when full).
    pub fn push(&mut self, b: u8) {
        if self.len < N {
            self.buf[self.len] = b;
            self.len += 1;
        }
    }
}

impl<const N: usize> Default for Line<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> core::fmt::Write for Line<N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            self.push(b);
        }
        Ok(())
    }
}

/// Formats `args` into a [`Line`].
pub fn fmt<const N: usize>(args: core::fmt::Arguments) -> Line<N> {
    let mut l = Line::new();
    let _ = core::fmt::Write::write_fmt(&mut l, args);
    l
}
