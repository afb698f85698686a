//! Experiment: link keelson-shim as a non-PIE executable.
fn main() {
    println!("cargo:rustc-link-arg-bin=keelson-shim=-no-pie");
}
