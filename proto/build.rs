//! Compiles every `.proto` under `crm/`, the vendored KServe V2 `inference/` and
//! `google.longrunning` with protox (pure Rust, so a fresh machine needs only the
//! Rust toolchain) and writes the encoded descriptor set that servers hand to reflection.

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not baked in with env!: a build script compiled in one checkout is
    // reused by another sharing the target directory, and must compile that one's protos.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let mut protos = Vec::new();
    collect_protos(&root.join("crm"), &mut protos)?;
    protos.sort();
    // The Open Inference Protocol (KServe V2), served beside the typed inference API.
    collect_protos(&root.join("inference"), &mut protos)?;
    // Served by every service that has long work, whether or not a contract imports it yet.
    protos.push(root.join("google/longrunning/operations.proto"));

    // tonic-prost-build prints no rerun-if-changed lines, so without these cargo would never
    // regenerate after a contract edit.
    println!("cargo:rerun-if-changed=crm");
    println!("cargo:rerun-if-changed=google");
    println!("cargo:rerun-if-changed=inference");
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }

    let mut compiler = protox::Compiler::new([&root])?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_files(&protos)?;
    let descriptors = compiler.file_descriptor_set();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("crm_descriptor.bin");
    // Encoded by protox, not prost: prost_types drops extension options, and servers read each
    // method's scope from `(crm.common.v1.auth)` in this set (reflection shows them too).
    std::fs::write(&descriptor_path, compiler.encode_file_descriptor_set())?;

    tonic_prost_build::configure()
        // Ordered maps make encoding deterministic: equal requests hash equally (request-id
        // idempotency compares hashes) and responses list attributes in a stable order.
        .btree_map(".")
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
