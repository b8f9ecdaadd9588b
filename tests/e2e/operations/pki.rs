//! A PKI minted with the openssl CLI.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::support::{exec, run};

/// What a certificate is for.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Use {
    Intermediate,
    /// A TLS server for `IP:127.0.0.1`.
    Server,
    Client,
}

/// Keys and certificates under one dir: `NAME.pem`, `NAME.key`.
pub(crate) struct Pki {
    pub(crate) dir: PathBuf,
}

impl Pki {
    pub(crate) fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        Pki {
            dir: dir.to_owned(),
        }
    }

    pub(crate) fn pem(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    pub(crate) fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }

    fn openssl(&self, args: &[&str]) -> String {
        run(Command::new("openssl").current_dir(&self.dir).args(args))
    }

    fn newkey(rsa: bool) -> &'static [&'static str] {
        if rsa {
            &["-newkey", "rsa:2048", "-nodes"]
        } else {
            &[
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
            ]
        }
    }

    /// A self-signed root CA (openssl's default `v3_ca`: `CA:TRUE`).
    pub(crate) fn root(&self, name: &str) -> PathBuf {
        let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
        let subj = format!("/CN=portcullis test {name}");
        let mut args = vec!["req", "-x509"];
        args.extend_from_slice(Pki::newkey(false));
        args.extend(["-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subj]);
        self.openssl(&args);
        self.pem(name)
    }

    /// A certificate `name` for `usage`, signed by `ca`, with `serial`; its `(pem, key)`.
    pub(crate) fn issue(
        &self,
        ca: &str,
        name: &str,
        usage: Use,
        serial: u32,
        rsa: bool,
    ) -> (PathBuf, PathBuf) {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let subj = match usage {
            Use::Server => "/CN=127.0.0.1".to_owned(),
            _ => format!("/CN=portcullis test {name}"),
        };
        let mut args = vec!["req"];
        args.extend_from_slice(Pki::newkey(rsa));
        args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        self.openssl(&args);
        let extensions = match usage {
            Use::Intermediate => {
                "basicConstraints=critical,CA:TRUE,pathlen:0\n\
                 keyUsage=critical,keyCertSign,cRLSign\n\
                 subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
            }
            Use::Server => {
                "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
                 extendedKeyUsage=serverAuth\n\
                 subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
            }
            Use::Client => {
                "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n\
                 subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
            }
        };
        std::fs::write(self.dir.join(&ext), extensions).unwrap();
        let (ca_pem, ca_key, serial) = (
            format!("{ca}.pem"),
            format!("{ca}.key"),
            format!("0x{serial:x}"),
        );
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-set_serial",
            &serial,
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
        (self.pem(name), self.key(name))
    }

    /// `name.pem` followed by each of `rest`: a chain file.
    pub(crate) fn chain(&self, name: &str, rest: &[&str]) -> PathBuf {
        let mut text = std::fs::read_to_string(self.pem(name)).unwrap();
        for r in rest {
            text.push_str(&std::fs::read_to_string(self.pem(r)).unwrap());
        }
        let path = self.dir.join(format!("{name}-chain.pem"));
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// The serial (`openssl x509 -serial`, hex such as `1001`) of the leaf certificate a new TLS
/// connection to `addr` is shown; `None` if no certificate came.
pub(crate) fn served_serial(addr: SocketAddr) -> Option<String> {
    let out = exec(Command::new("timeout").args([
        "10",
        "openssl",
        "s_client",
        "-connect",
        &addr.to_string(),
        "-showcerts",
    ]));
    let begin = out.stdout.find("-----BEGIN CERTIFICATE-----")?;
    let end_marker = "-----END CERTIFICATE-----";
    let end = out.stdout[begin..].find(end_marker)? + begin + end_marker.len();
    let pem = &out.stdout[begin..end];
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(pem.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix("serial=")
        .map(|s| s.trim_start_matches('0').to_ascii_lowercase())
}
