//! cargo run -p larder-embed -- 127.0.0.1:3129   then   curl -x http://127.0.0.1:3129 http://...

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3129".into());
    let listener = std::net::TcpListener::bind(&addr)?;
    eprintln!("larder-embed: caching proxy on {addr} (blocking std::net, larder-core only)");
    larder_embed::serve(listener, None)
}
