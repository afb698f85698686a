//! Compiles the CRI v1 proto and keelson's runtime admin proto into Rust (prost messages, tonic client and server).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/api.proto");
    println!("cargo:rerun-if-changed=proto/admin.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Streaming RPCs not served yet answer UNIMPLEMENTED instead of needing hand-written stream types.
        .generate_default_stubs(true)
        // Registry secrets must never reach a log line through `{:?}`: Debug is written by hand in lib.rs.
        .skip_debug(["runtime.v1.AuthConfig"])
        .compile_protos(&["proto/api.proto", "proto/admin.proto"], &["proto"])?;
    Ok(())
}
