//! Startup code first in the release binary.
//!
//! An idle server runs about 2 MB of its 23 MB of machine code (start-up,
//! migrations check, listeners, the workers' first rounds), spread over the
//! whole `.text` section. The kernel maps a file page with its neighbours (64
//! KiB "fault-around"), so an idle server kept about 15 MiB of the binary
//! mapped. `build/startup-order.txt` lists the functions an idle server runs
//! (made by `scripts/startup-order`), and the linker puts them first, next to
//! each other: the idle server maps about 2.5 MiB of code instead
//! (docs/performance.md, "Idle RSS and the startup order").
//!
//! Only where the linker is known to be LLD (rustc's default linker on
//! `x86_64-unknown-linux-gnu` since Rust 1.90) and nobody chose another one; in
//! release builds of the `lattice` binary only. Names the file holds that the
//! build does not have (after code or dependency changes) are skipped: the
//! binary is the same, only less compact, until the file is made again.
//! `LATTICE_NO_STARTUP_ORDER=1` turns it off.

use std::{env, path::Path, process::Command};

const ORDER_FILE: &str = "build/startup-order.txt";

fn main() {
    println!("cargo::rerun-if-changed={ORDER_FILE}");
    println!("cargo::rerun-if-env-changed=LATTICE_NO_STARTUP_ORDER");
    if let Some(reason) = why_not() {
        if env::var("PROFILE").as_deref() == Ok("release") {
            println!("cargo::warning=no startup order: {reason}");
        }
        return;
    }
    let file = Path::new(&env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join(ORDER_FILE);
    println!(
        "cargo::rustc-link-arg-bin=lattice=-Wl,--symbol-ordering-file={}",
        file.display()
    );
    println!("cargo::rustc-link-arg-bin=lattice=-Wl,--no-warn-symbol-ordering");
}

/// Why the order is not applied to this build, if it is not.
fn why_not() -> Option<String> {
    let var = |name: &str| env::var(name).unwrap_or_default();
    if var("PROFILE") != "release" {
        return Some("not a release build".into());
    }
    if !var("LATTICE_NO_STARTUP_ORDER").is_empty() {
        return Some("LATTICE_NO_STARTUP_ORDER is set".into());
    }
    let target = (
        var("CARGO_CFG_TARGET_ARCH"),
        var("CARGO_CFG_TARGET_OS"),
        var("CARGO_CFG_TARGET_ENV"),
    );
    if target != ("x86_64".into(), "linux".into(), "gnu".into()) {
        return Some("the target's default linker is not LLD".into());
    }
    // A linker (or linker flavour, or self-contained linking) chosen in the
    // configuration or RUSTFLAGS: its options are not known here.
    if env::var_os("RUSTC_LINKER").is_some() || var("CARGO_ENCODED_RUSTFLAGS").contains("link") {
        return Some("a linker or linker options are configured".into());
    }
    if !Path::new(&var("CARGO_MANIFEST_DIR"))
        .join(ORDER_FILE)
        .is_file()
    {
        return Some(format!("{ORDER_FILE} is missing"));
    }
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    match minor {
        Some(m) if m >= 90 => None,
        _ => Some(format!(
            "rustc before 1.90 links with the system linker ({version})"
        )),
    }
}
