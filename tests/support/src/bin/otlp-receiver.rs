//! The OTLP receiver for the kernel matrix's guests, which have no network:
//! `otlp-receiver <grpc|http> <port>` listens on loopback and prints each span it
//! receives as one tab-separated line (see `Span`'s `Display`).

use std::io::Write;

use test_support::otlp::Receiver;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(protocol), Some(port)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: otlp-receiver <grpc|http> <port>");
        std::process::exit(2);
    };
    let addr = format!("127.0.0.1:{port}");
    let receiver = match protocol.as_str() {
        "grpc" => Receiver::grpc_on(&addr),
        "http" => Receiver::http_on(&addr),
        other => {
            eprintln!("unknown protocol {other:?}");
            std::process::exit(2);
        }
    };
    let mut printed = 0;
    loop {
        let spans = receiver.spans_after(printed);
        let mut out = std::io::stdout().lock();
        for s in &spans {
            let _ = writeln!(out, "{protocol}\t{s}");
        }
        let _ = out.flush();
        printed += spans.len();
    }
}
