#!/usr/bin/env python3
"""Signs and verifies release files the way `cosign sign-blob --key` / `verify-blob --key` do.

A signature is the base64 (standard, padded, no newline) of the DER ECDSA P-256 signature over
the SHA-256 of the file; the key is a P-256 private key as PKCS#8 PEM (what
`openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` writes; `cosign
import-key-pair --key` turns it into cosign's own encrypted format) and the public key SPKI PEM
(`cosign.pub`). Independent of portcullis' Rust code, so that a bug there cannot hide one here.

    cosign_blob.py generate PRIVATE_OUT PUBLIC_OUT   # a fresh key pair (private file mode 600)
    cosign_blob.py public KEY PUBLIC_OUT             # the public half of KEY
    cosign_blob.py sign KEY FILE...                  # writes FILE.sig beside each FILE
    cosign_blob.py verify PUBLIC FILE SIG            # exit 0 if SIG is PUBLIC's signature of FILE

An encrypted KEY's password comes from $PORTCULLIS_RELEASE_KEY_PASSWORD or the file named by
$PORTCULLIS_RELEASE_KEY_PASSWORD_FILE, never from the command line; it is never printed.
"""

import base64
import os
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec


def password():
    """The key's password from the environment or a file, or None."""
    value = os.environ.get("PORTCULLIS_RELEASE_KEY_PASSWORD")
    if value:
        return value.encode()
    path = os.environ.get("PORTCULLIS_RELEASE_KEY_PASSWORD_FILE")
    if path:
        with open(path, "rb") as f:
            return f.read().rstrip(b"\r\n")
    return None


def load_private(path):
    """The P-256 private key in PEM file `path`; exits with a message otherwise."""
    with open(path, "rb") as f:
        pem = f.read()
    try:
        key = serialization.load_pem_private_key(pem, password=password())
    except (TypeError, ValueError) as e:
        # The message names neither the password nor the key material.
        sys.exit(f"cosign_blob: cannot read private key {path}: {type(e).__name__}: {e}")
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        sys.exit(f"cosign_blob: {path} is not an ECDSA P-256 key (cosign's key type)")
    return key


def public_pem(key):
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write(path, data, mode=0o644):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def generate(private_out, public_out):
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write(private_out, pem, 0o600)
    write(public_out, public_pem(key))


def sign(key_path, files):
    key = load_private(key_path)
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        der = key.sign(data, ec.ECDSA(hashes.SHA256()))
        write(path + ".sig", base64.b64encode(der))


def verify(public_path, path, sig_path):
    with open(public_path, "rb") as f:
        public = serialization.load_pem_public_key(f.read())
    with open(path, "rb") as f:
        data = f.read()
    with open(sig_path, "rb") as f:
        der = base64.b64decode(f.read().strip(), validate=True)
    try:
        public.verify(der, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        sys.exit(f"cosign_blob: {sig_path}: not a valid signature of {path} by {public_path}")
    print(f"{path}: signature verified ({public_path})")


def main(argv):
    match argv:
        case ["generate", private_out, public_out]:
            generate(private_out, public_out)
        case ["public", key_path, public_out]:
            write(public_out, public_pem(load_private(key_path)))
        case ["sign", key_path, *files] if files:
            sign(key_path, files)
        case ["verify", public_path, path, sig_path]:
            verify(public_path, path, sig_path)
        case _:
            sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
