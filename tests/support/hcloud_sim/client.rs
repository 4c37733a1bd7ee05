//! A tiny raw-HTTP client for the Hetzner Cloud API simulator (a test double of Hetzner's API,
//! not the real thing): tests read exact statuses, headers and JSON with it, where the `hcloud`
//! crate would hide headers and error bodies. HTTP/1.0 over `std::net::TcpStream`, so the
//! answer is neither chunked nor kept alive.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

use super::HcloudSim;

/// An answer: status, headers (name, value) and the body as JSON (`Null` when empty).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub json: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `error.code` of an error answer, `""` otherwise.
    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }
}

impl HcloudSim {
    /// `GET /v1{path}` with the simulator's token.
    pub fn get(&self, path: &str) -> Reply {
        self.call("GET", path, None)
    }

    /// `METHOD /v1{path}` with the simulator's token and an optional JSON body.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        self.call_with_token(method, path, body, Some(&self.token))
    }

    /// As [`HcloudSim::call`] with any token, or none.
    pub fn call_with_token(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> Reply {
        let addr = self
            .endpoint
            .trim_start_matches("http://")
            .trim_end_matches("/v1");
        let mut stream = TcpStream::connect(addr).expect("connect to the simulator");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("set a read timeout");
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut request = format!("{method} /v1{path} HTTP/1.0\r\nHost: {addr}\r\n");
        if let Some(token) = token {
            request.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        if !body.is_empty() {
            request.push_str("Content-Type: application/json\r\n");
        }
        request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        stream
            .write_all(request.as_bytes())
            .expect("send to the simulator");
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .expect("read the simulator's answer");
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {head}"));
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let json = serde_json::from_str(body).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            json,
        }
    }
}

/// Percent-encode a query value (label selectors hold `=`, `,`, `/`, `!`, spaces).
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
