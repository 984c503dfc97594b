//! A minimal blocking HTTP/1.0 client for tests.
//!
//! Plain `std::net` rather than reqwest: it works the same from a plain `#[test]` and from
//! inside a tokio runtime, and a test sees exactly what the server sent (status, headers,
//! body). HTTP/1.0 keeps the server from answering in chunks, so the body is everything
//! after the headers.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde_json::Value;
use url::Url;

/// How long a test's HTTP request may take, connecting and reading included.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// What a server answered.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names as sent; look them up with [`HttpResponse::header`].
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The first header of that name, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The body as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|err| {
            panic!(
                "body of a {} answer is not JSON ({err}): {:?}",
                self.status, self.body
            )
        })
    }
}

/// `GET url`.
pub fn http_get(url: &str) -> io::Result<HttpResponse> {
    http_request("GET", url, None, HTTP_TIMEOUT)
}

/// `POST url` with a JSON body.
pub fn http_post_json(url: &str, body: &Value) -> io::Result<HttpResponse> {
    http_request("POST", url, Some(body), HTTP_TIMEOUT)
}

/// Any method, with an optional JSON body. An error means no HTTP answer at all (refused,
/// timed out, garbled); every status, 500 included, is an `Ok`.
pub fn http_request(
    method: &str,
    url: &str,
    json: Option<&Value>,
    timeout: Duration,
) -> io::Result<HttpResponse> {
    let url = Url::parse(url).map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
    let host = url.host_str().unwrap_or_default();
    let port = url.port_or_known_default().unwrap_or(80);
    let addr = (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no address: {url}")))?;

    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;

    let body = json.map(Value::to_string).unwrap_or_default();
    let mut request = format!(
        "{method} {} HTTP/1.0\r\nHost: {host}:{port}\r\n",
        &url[url::Position::BeforePath..]
    );
    if json.is_some() {
        request += &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
    }
    request += "\r\n";
    request += &body;
    stream.write_all(request.as_bytes())?;

    // HTTP/1.0: the server closes the connection after the answer.
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> io::Result<HttpResponse> {
    let garbled = |what: &str| {
        let text = String::from_utf8_lossy(raw);
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} in answer {text:?}"),
        )
    };
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| garbled("no end of headers"))?;
    let mut lines = head.split("\r\n");

    // "HTTP/1.1 200 OK"
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| garbled("no status"))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect();

    Ok(HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    })
}
