//! A local HTTP server of a folder's files, intact, altered or cut short, for the download tests.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Clone, Copy)]
pub enum Serve {
    /// The file as it is.
    Intact,
    /// One byte in the middle flipped, with the right length.
    Altered,
    /// The full length announced, half of the bytes sent, then the connection closed.
    CutShort,
}

/// A local server of `root`'s files under `<url>/<name>`.
pub struct Server {
    pub url: String,
    requests: Arc<AtomicUsize>,
}

impl Server {
    /// Ready when this returns: the socket listens before the thread starts, so a connection
    /// made at once waits in the backlog.
    pub fn start(root: PathBuf, mode: Serve) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/weights", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                let _ = respond(stream, &root, mode);
            }
        });
        Self { url, requests }
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn respond(mut stream: TcpStream, root: &Path, mode: Serve) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
    }
    let name = request.split_whitespace().nth(1).and_then(|path| path.strip_prefix("/weights/"));
    let body =
        name.filter(|n| !n.contains('/') && !n.contains("..")).and_then(|n| std::fs::read(root.join(n)).ok());
    let Some(mut body) = body else {
        return stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    };
    let length = body.len();
    match mode {
        Serve::Intact => {}
        Serve::Altered => body[length / 2] ^= 0xff,
        Serve::CutShort => body.truncate(length / 2),
    }
    write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n")?;
    stream.write_all(&body)
}

/// A URL on a local port nothing listens on.
pub fn unreachable_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/weights")
}
