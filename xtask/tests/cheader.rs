//! Runs the C header generator's tests even before `mod cheader;` is wired into the
//! xtask binary (integration tests cannot reach a binary's modules otherwise).
#[path = "../src/cheader.rs"]
#[allow(dead_code)]
mod cheader;

/// Writes the header when `DIOSIX_WRITE_HEADER=1` (a bootstrap for the checked-in copy).
#[test]
fn write_header_if_asked() {
    if std::env::var("DIOSIX_WRITE_HEADER").as_deref() == Ok("1") {
        cheader::cmd_cheader(&[]).unwrap();
    }
}
