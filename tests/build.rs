//! Generates the EventMesh gRPC *server* stubs for the test double of the runtime, from the project's own
//! `.proto` files (protox; no system `protoc`). Messages come from `meshgate-protocols`.

fn main() {
    println!("cargo:rerun-if-changed=../protocols/proto");
    let files = protox::compile(["eventmesh-service.proto"], ["../protocols/proto"])
        .unwrap_or_else(|e| panic!("protocols/proto does not compile: {e}"));
    tonic_prost_build::configure()
        .build_client(false)
        .extern_path(".org.apache.eventmesh.cloudevents.v1", "::meshgate_protocols::eventmesh::grpc")
        .compile_fds(files)
        .unwrap_or_else(|e| panic!("generating the EventMesh gRPC server stubs failed: {e}"));
}
