//! Compiles `src/source/message_headers.c`, which reads one field of librdkafka's private message
//! type, against the librdkafka source tree that rdkafka-sys configured and built (rdkafka-sys
//! exports it as `DEP_RDKAFKA_ROOT` to crates that depend on it directly): the struct layout the
//! shim reads is, by construction, that of the library linked into the binary.

use std::env;
use std::path::Path;

fn main() {
    const SHIM: &str = "src/source/message_headers.c";
    println!("cargo:rerun-if-changed={SHIM}");
    println!("cargo:rerun-if-env-changed=DEP_RDKAFKA_ROOT");
    let root = env::var("DEP_RDKAFKA_ROOT").unwrap_or_else(|_| {
        panic!(
            "DEP_RDKAFKA_ROOT is not set: streamscore needs rdkafka-sys as a direct dependency, built from its \
             bundled librdkafka (not `dynamic-linking` or `cmake-build`), to compile {SHIM}"
        )
    });
    let src = Path::new(&root).join("src");
    if !src.join("rdkafka_msg.h").is_file() || !Path::new(&root).join("config.h").is_file() {
        panic!("{root} is not a configured librdkafka tree (no src/rdkafka_msg.h or config.h): cannot compile {SHIM}");
    }
    cc::Build::new().file(SHIM).include(&src).include(&root).warnings(false).compile("streamscore_rdkafka_shim");
}
