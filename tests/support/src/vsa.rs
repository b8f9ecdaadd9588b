//! Verification summaries checked by implementations other than portcullis': the signing key
//! made by the OpenSSL CLI, a Sigstore bundle verified by sigstore-js (`@sigstore/verify` from
//! npm, run by node), and a DSSE envelope verified the way cosign checks a keyed attestation
//! (the signature over the DSSE PAE with the public key) by Python's `cryptography`.
//!
//! The npm packages are installed once into `$PORTCULLIS_NPM_DIR` (default
//! `~/.cache/portcullis-npm`) and `cryptography` into a venv at `$PORTCULLIS_VENV` (default
//! `~/.cache/portcullis-venv`) when the system `python3` lacks it; each install goes to a
//! scratch directory first and is renamed into place whole, so concurrent tests (nextest runs
//! each in its own process) never see half of one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// sigstore-js, pinned: the verifier, and the bundle reader it verifies.
const NPM_PACKAGES: &[&str] = &["@sigstore/verify@3.1.1", "@sigstore/bundle@4.0.0"];

/// A P-256 key pair made by `openssl genpkey`: the PKCS#8 private key at `key` (encrypted with
/// `password` if given: PBES2, AES-256-CBC) and the public key (SPKI PEM) at `public`.
pub fn openssl_p256_key(dir: &Path, name: &str, password: Option<&str>) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let mut gen = Command::new("openssl");
    gen.args(["genpkey", "-algorithm", "EC", "-pkeyopt"])
        .arg("ec_paramgen_curve:P-256")
        .arg("-out")
        .arg(&key);
    if let Some(pw) = password {
        gen.args(["-aes-256-cbc", "-pass", &format!("pass:{pw}")]);
    }
    run(&mut gen, "openssl genpkey");
    let mut pubout = Command::new("openssl");
    pubout.arg("pkey").arg("-in").arg(&key);
    if let Some(pw) = password {
        pubout.args(["-passin", &format!("pass:{pw}")]);
    }
    pubout.arg("-pubout").arg("-out").arg(&public);
    run(&mut pubout, "openssl pkey -pubout");
    (key, public)
}

/// Any other private key `openssl genpkey` makes (`-algorithm ALG` and its `-pkeyopt`s), PEM.
pub fn openssl_key(path: &Path, algorithm: &str, opts: &[&str]) {
    let mut gen = Command::new("openssl");
    gen.args(["genpkey", "-algorithm", algorithm]);
    for o in opts {
        gen.args(["-pkeyopt", o]);
    }
    gen.arg("-out").arg(path);
    run(&mut gen, "openssl genpkey");
}

/// Verifies the Sigstore bundle `bundle_json` with sigstore-js against the one public key
/// `public_pem`, found by the bundle's `publicKey.hint` (which must be base64 of the SHA-256 of
/// the key's DER, computed here by node), no transparency log, timestamp or CT required.
/// Returns the DSSE payload (the statement) on success, sigstore-js' error otherwise.
pub fn sigstore_js_verify(bundle_json: &[u8], public_pem: &str) -> Result<Vec<u8>, String> {
    let modules = npm_packages();
    let dir = crate::tempdir();
    let bundle = dir.path().join("bundle.json");
    let key = dir.path().join("key.pem");
    std::fs::write(&bundle, bundle_json).expect("write bundle.json");
    std::fs::write(&key, public_pem).expect("write key.pem");
    let script = r#"
const fs = require('fs');
const crypto = require('crypto');
const { bundleFromJSON } = require('@sigstore/bundle');
const { Verifier, toSignedEntity, toTrustMaterial } = require('@sigstore/verify');
const [bundlePath, keyPath] = process.argv.slice(-2);
const bundle = bundleFromJSON(JSON.parse(fs.readFileSync(bundlePath, 'utf8')));
const publicKey = crypto.createPublicKey(fs.readFileSync(keyPath, 'utf8'));
const der = publicKey.export({ type: 'spki', format: 'der' });
const expected = crypto.createHash('sha256').update(der).digest('base64');
const keys = (hint) => {
  if (hint !== expected) throw new Error(`no key for hint ${hint} (the key's is ${expected})`);
  return { publicKey, validFor: () => true };
};
const root = { certificateAuthorities: [], timestampAuthorities: [], tlogs: [], ctlogs: [] };
const verifier = new Verifier(toTrustMaterial(root, keys), {
  tlogThreshold: 0, ctlogThreshold: 0, timestampThreshold: 0,
});
verifier.verify(toSignedEntity(bundle));
if (bundle.content.$case !== 'dsseEnvelope') throw new Error('not a DSSE bundle');
process.stdout.write(bundle.content.dsseEnvelope.payload);
"#;
    let out = Command::new("node")
        .arg("-e")
        .arg(script)
        .arg(&bundle)
        .arg(&key)
        .env("NODE_PATH", modules.join("node_modules"))
        .output()
        .expect("run node (is Node.js installed?)");
    result(out)
}

/// Verifies the DSSE envelope `envelope_json` as cosign checks a keyed attestation: an ECDSA
/// P-256 SHA-256 signature over the PAE (`DSSEv1 <len> <type> <len> <payload>`) with
/// `public_pem`, by Python's `cryptography`. Returns the payload on success.
pub fn python_dsse_verify(envelope_json: &[u8], public_pem: &str) -> Result<Vec<u8>, String> {
    let python = python_with_cryptography();
    let dir = crate::tempdir();
    let envelope = dir.path().join("envelope.json");
    let key = dir.path().join("key.pem");
    std::fs::write(&envelope, envelope_json).expect("write envelope.json");
    std::fs::write(&key, public_pem).expect("write key.pem");
    let script = r#"
import base64, json, sys
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
env = json.load(open(sys.argv[1]))
key = serialization.load_pem_public_key(open(sys.argv[2], 'rb').read())
payload = base64.b64decode(env['payload'], validate=True)
ptype = env['payloadType'].encode()
pae = b'DSSEv1 %d %s %d %s' % (len(ptype), ptype, len(payload), payload)
sigs = env['signatures']
if not sigs:
    sys.exit('no signatures')
for s in sigs:
    key.verify(base64.b64decode(s['sig'], validate=True), pae, ec.ECDSA(hashes.SHA256()))
sys.stdout.buffer.write(payload)
"#;
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(&envelope)
        .arg(&key)
        .output()
        .expect("run python3");
    result(out)
}

fn result(out: Output) -> Result<Vec<u8>, String> {
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (is it installed?)"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cache_dir(var: &str, default: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os(var) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
    home.join(".cache").join(default)
}

/// A directory holding `node_modules` with [`NPM_PACKAGES`], installed on first use.
fn npm_packages() -> PathBuf {
    let dir = cache_dir("PORTCULLIS_NPM_DIR", "portcullis-npm");
    let marker = |d: &Path| d.join("node_modules/@sigstore/verify/package.json");
    if marker(&dir).is_file() {
        return dir;
    }
    let parent = dir.parent().expect("a cache directory has a parent");
    std::fs::create_dir_all(parent).expect("create the npm cache's parent");
    let scratch = tempfile::Builder::new()
        .prefix(".portcullis-npm-")
        .tempdir_in(parent)
        .expect("a scratch directory for npm");
    let mut install = Command::new("npm");
    install
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--no-save",
            "--prefix",
        ])
        .arg(scratch.path())
        .args(NPM_PACKAGES);
    run(&mut install, "npm install @sigstore/verify");
    settle(scratch, &dir, marker)
}

/// A `python3` that imports `cryptography`: the system's, or a venv made for it.
fn python_with_cryptography() -> PathBuf {
    let imports = |python: &Path| {
        Command::new(python)
            .args(["-c", "import cryptography"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let system = PathBuf::from("python3");
    if imports(&system) {
        return system;
    }
    let venv = cache_dir("PORTCULLIS_VENV", "portcullis-venv");
    let python = |d: &Path| d.join("bin/python3");
    if imports(&python(&venv)) {
        return python(&venv);
    }
    let parent = venv.parent().expect("a cache directory has a parent");
    std::fs::create_dir_all(parent).expect("create the venv's parent");
    let scratch = tempfile::Builder::new()
        .prefix(".portcullis-venv-")
        .tempdir_in(parent)
        .expect("a scratch directory for the venv");
    run(
        Command::new("python3")
            .args(["-m", "venv"])
            .arg(scratch.path()),
        "python3 -m venv",
    );
    run(
        Command::new(python(scratch.path())).args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "cryptography",
        ]),
        "pip install cryptography",
    );
    // A venv's scripts name its own path: it is used where it was made only if the rename
    // below wins; otherwise the one already in place is.
    let ready = settle(scratch, &venv, |d| python(d));
    python(&ready)
}

/// Moves a finished `scratch` install to `dir`, unless another process got there first; either
/// way, returns `dir` once `marker(dir)` exists.
fn settle(scratch: tempfile::TempDir, dir: &Path, marker: impl Fn(&Path) -> PathBuf) -> PathBuf {
    let path = scratch.keep();
    if std::fs::rename(&path, dir).is_err() {
        let _ = std::fs::remove_dir_all(&path);
    }
    assert!(
        marker(dir).exists(),
        "{} is incomplete: remove it and run again",
        dir.display()
    );
    dir.to_owned()
}
