//! Generates the EventMesh gRPC client stubs (`PublisherService`, `HeartbeatService`) from the project's own
//! `.proto` files in `protocols/proto`, with protox (no system `protoc`). The message types are not generated
//! here: they come from `meshgate-protocols`, where the wire mapping lives.

fn main() {
    println!("cargo:rerun-if-changed=../protocols/proto");
    let files = protox::compile(["eventmesh-service.proto"], ["../protocols/proto"])
        .unwrap_or_else(|e| panic!("protocols/proto does not compile: {e}"));
    tonic_prost_build::configure()
        .build_server(false)
        .extern_path(".org.apache.eventmesh.cloudevents.v1", "::meshgate_protocols::eventmesh::grpc")
        .compile_fds(files)
        .unwrap_or_else(|e| panic!("generating the EventMesh gRPC client failed: {e}"));
}
