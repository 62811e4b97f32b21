//! The HTTP listener. For now it answers `GET /health`; the management API comes with
//! `postroom-http`.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub(crate) async fn serve(listener: TcpListener, mut stopped: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((socket, _)) = accepted {
                    tokio::spawn(respond(socket));
                }
            }
            _ = stopped.changed() => break,
        }
    }
}

async fn respond(mut socket: TcpStream) {
    let mut buf = [0u8; 2048];
    let Ok(Ok(n)) =
        tokio::time::timeout(std::time::Duration::from_secs(5), socket.read(&mut buf)).await
    else {
        return;
    };
    let request = String::from_utf8_lossy(&buf[..n]);
    let path = request.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = match path {
        "/health" => ("200 OK", r#"{"status":"ok"}"#.to_string()),
        _ => ("404 Not Found", format!(r#"{{"error":"not_found","reason":"no route {path:?}"}}"#)),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = socket.write_all(response.as_bytes()).await;
    let _ = socket.shutdown().await;
}
