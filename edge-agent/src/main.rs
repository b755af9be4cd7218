//! `edge-agent`: bridges an existing broker's topics into the mesh. The bridge source arrives with issue 11; the
//! library half of this crate already serves the `meshgate` gateway.

fn main() {
    eprintln!("edge-agent: the MQTT bridge source is not available in this version; run `meshgate` instead");
    std::process::exit(2);
}
