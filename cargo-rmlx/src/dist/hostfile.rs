//! The hostfile of a tensor-parallel run, in either of MLX's two formats: the ring backend's
//! own (`MLX_HOSTFILE`: a list per rank of `"ip:port"` addresses) or `mlx.launch`'s (a list of
//! `{"ssh": host, "ips": [ip, …]}`, optionally inside `{"backend": …, "envs": ["K=V", …],
//! "hosts": […]}`; ports are assigned from [`STARTING_PORT`] up, one per rank and IP, as
//! `mlx.launch` does). Errors point at the offending text in the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::diagnostic::{code, Code, Diagnostic, Result};

/// First port given to `mlx.launch`-format hosts (`mlx.launch`'s default).
pub const STARTING_PORT: u16 = 32323;

const CODE: Code = Code::Dist(code::Dist::Hostfile);

/// One rank's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Host to start the rank on over ssh (`None`: this machine).
    pub ssh: Option<String>,
    /// The ring backend's `"ip:port"` addresses of this rank.
    pub addrs: Vec<String>,
}

/// A parsed hostfile: one [`Host`] per rank, in rank order.
#[derive(Debug, Clone)]
pub struct Hostfile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Backend named by the file (`mlx.launch` format), if any.
    pub backend: Option<String>,
    /// `KEY=VALUE` environment for every rank.
    pub envs: Vec<(String, String)>,
    /// The ranks' hosts.
    pub hosts: Vec<Host>,
}

impl Hostfile {
    /// Reads and checks `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Diagnostic::io(CODE, "cannot read the hostfile", path, &e))?;
        Self::parse(path, &text)
    }

    /// Parses hostfile `text` (read from `path`).
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let p = Parser {
            path,
            text: Arc::from(text),
        };
        let json: Value = serde_json::from_str(text).map_err(|e| {
            let at = crate::diagnostic::offset_at(text, e.line(), e.column());
            p.error(at..at, format!("the hostfile is not valid JSON: {e}"))
        })?;
        let mut file = Hostfile {
            path: path.to_path_buf(),
            backend: None,
            envs: Vec::new(),
            hosts: Vec::new(),
        };
        let hosts = match &json {
            Value::Array(hosts) => hosts,
            Value::Object(o) => {
                file.backend = o.get("backend").and_then(Value::as_str).map(String::from);
                file.envs = p.envs(o.get("envs"))?;
                match o.get("hosts") {
                    Some(Value::Array(hosts)) => hosts,
                    _ => {
                        return Err(p.error(0..0, "the hostfile object needs a `hosts` list".into()))
                    }
                }
            }
            _ => return Err(p.error(0..0, "a hostfile is a JSON list of hosts".into())),
        };
        if hosts.is_empty() {
            return Err(p.error(0..text.len(), "the hostfile lists no hosts".into()));
        }
        let mut port = STARTING_PORT;
        for (rank, h) in hosts.iter().enumerate() {
            file.hosts.push(p.host(rank, h, &mut port)?);
        }
        Ok(file)
    }

    /// The ring backend's hostfile for these hosts (`MLX_HOSTFILE`'s content).
    pub fn ring_json(&self) -> String {
        let hosts: Vec<&Vec<String>> = self.hosts.iter().map(|h| &h.addrs).collect();
        serde_json::to_string(&hosts).unwrap_or_else(|_| "[]".into())
    }
}

struct Parser<'a> {
    path: &'a Path,
    text: Arc<str>,
}

impl Parser<'_> {
    fn error(&self, span: std::ops::Range<usize>, msg: String) -> Diagnostic {
        Diagnostic::error(CODE, msg)
            .with_file(self.path)
            .with_source(self.text.clone())
            .with_span(span, "here")
            .with_help(
                "a hostfile is MLX's: [[\"ip:port\", …], …] per rank (ring), or \
                 [{\"ssh\": \"host\", \"ips\": [\"ip\"]}, …] (mlx.launch)",
            )
    }

    /// The span of `needle`'s first occurrence as a JSON string, else the whole file.
    fn span_of(&self, needle: &str) -> std::ops::Range<usize> {
        let quoted = serde_json::to_string(needle).unwrap_or_default();
        match self.text.find(&quoted) {
            Some(i) => i..i + quoted.len(),
            None => 0..self.text.len(),
        }
    }

    fn host(&self, rank: usize, h: &Value, port: &mut u16) -> Result<Host> {
        match h {
            Value::Array(addrs) => {
                let addrs = addrs
                    .iter()
                    .map(|a| self.address(rank, a))
                    .collect::<Result<Vec<_>>>()?;
                if addrs.is_empty() {
                    return Err(self.error(0..0, format!("rank {rank} has no address")));
                }
                Ok(Host { ssh: None, addrs })
            }
            Value::Object(o) => {
                let ssh = o.get("ssh").and_then(Value::as_str).map(String::from);
                let ips = match o.get("ips") {
                    Some(Value::Array(ips)) if !ips.is_empty() => ips,
                    _ => {
                        let span = ssh.as_deref().map_or(0..0, |s| self.span_of(s));
                        return Err(self.error(
                            span,
                            format!("rank {rank} needs `ips`: the ring backend connects to IPs, not host names"),
                        ));
                    }
                };
                let mut addrs = Vec::new();
                for ip in ips {
                    let ip = ip.as_str().ok_or_else(|| {
                        self.error(
                            0..0,
                            format!("rank {rank}: an IP must be a string, found {ip}"),
                        )
                    })?;
                    addrs.push(format!("{ip}:{port}"));
                    *port = port
                        .checked_add(1)
                        .ok_or_else(|| self.error(0..0, "ran out of ports".into()))?;
                }
                Ok(Host { ssh, addrs })
            }
            other => Err(self.error(
                0..0,
                format!("rank {rank}: a host is a list of \"ip:port\" or an object, found {other}"),
            )),
        }
    }

    /// One `"ip:port"` address.
    fn address(&self, rank: usize, a: &Value) -> Result<String> {
        let s = a.as_str().ok_or_else(|| {
            self.error(
                0..0,
                format!("rank {rank}: an address must be a string, found {a}"),
            )
        })?;
        let ok = s
            .rsplit_once(':')
            .is_some_and(|(ip, port)| !ip.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
        if ok {
            return Ok(s.to_string());
        }
        Err(self.error(
            self.span_of(s),
            format!("rank {rank}: `{s}` is not an \"ip:port\" address"),
        ))
    }

    fn envs(&self, v: Option<&Value>) -> Result<Vec<(String, String)>> {
        let Some(v) = v else { return Ok(Vec::new()) };
        let list = v
            .as_array()
            .ok_or_else(|| self.error(0..0, "`envs` must be a list of \"KEY=VALUE\"".into()))?;
        list.iter()
            .map(|e| {
                let s = e.as_str().unwrap_or_default();
                match s.split_once('=') {
                    Some((k, v))
                        if !k.is_empty()
                            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
                    {
                        Ok((k.to_string(), v.to_string()))
                    }
                    _ => Err(self.error(
                        self.span_of(s),
                        format!("`{e}` is not a \"KEY=VALUE\" entry"),
                    )),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Hostfile> {
        Hostfile::parse(Path::new("hosts.json"), text)
    }

    #[test]
    fn both_mlx_formats_give_ring_addresses() {
        let ring = parse(r#"[["127.0.0.1:5000"], ["127.0.0.1:5001"]]"#).unwrap();
        assert_eq!(
            ring.ring_json(),
            r#"[["127.0.0.1:5000"],["127.0.0.1:5001"]]"#
        );
        assert!(ring.hosts.iter().all(|h| h.ssh.is_none()));
        let launch = parse(
            r#"{"backend": "ring", "envs": ["A=1"], "hosts": [
                {"ssh": "m1", "ips": ["10.0.0.1"]}, {"ssh": "m2", "ips": ["10.0.0.2", "10.0.1.2"]}]}"#,
        )
        .unwrap();
        assert_eq!(launch.backend.as_deref(), Some("ring"));
        assert_eq!(launch.envs, [("A".to_string(), "1".to_string())]);
        assert_eq!(launch.hosts[0].ssh.as_deref(), Some("m1"));
        assert_eq!(
            launch.ring_json(),
            r#"[["10.0.0.1:32323"],["10.0.0.2:32324","10.0.1.2:32325"]]"#
        );
    }

    #[test]
    fn errors_point_into_the_file() {
        let text = r#"[["127.0.0.1:5000"], ["127.0.0.1"]]"#;
        let e = parse(text).unwrap_err();
        assert_eq!(e.code, CODE);
        assert!(e.message.contains("rank 1"), "{}", e.message);
        let span = e.span.clone().unwrap();
        assert_eq!(&text[span], r#""127.0.0.1""#);
        let e = parse("[[\"a:1\"],\n  oops]").unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        assert_eq!(
            e.line_col(e.span.clone().unwrap().start).map(|l| l.0),
            Some(2)
        );
        assert!(parse("[]").unwrap_err().message.contains("no hosts"));
        let e = parse(r#"[{"ssh": "m1"}]"#).unwrap_err();
        assert!(e.message.contains("needs `ips`"), "{}", e.message);
    }
}
