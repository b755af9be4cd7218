//! Generates the EventMesh gRPC message types from `proto/` when the `eventmesh` feature is on, with protox (a
//! protobuf compiler in Rust), so a build needs nothing but cargo.

fn main() {
    #[cfg(feature = "eventmesh")]
    eventmesh::generate();
}

#[cfg(feature = "eventmesh")]
mod eventmesh {
    pub fn generate() {
        println!("cargo:rerun-if-changed=proto");
        let files = protox::compile(["eventmesh-service.proto"], ["proto"])
            .unwrap_or_else(|e| panic!("proto/ does not compile: {e}"));
        prost_build::Config::new()
            // BTreeMap: the crate is no_std, and a sorted map encodes attributes in a stable order.
            .btree_map(["."])
            .compile_fds(files)
            .unwrap_or_else(|e| panic!("generating the EventMesh messages failed: {e}"));
    }
}
