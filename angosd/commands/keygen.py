"""``angosd keygen -o KEY``: an Ed25519 key pair for signing bundles.

Writes the private key to ``KEY`` (PEM, PKCS#8, mode 0600; keep it on the connected side)
and the public key to ``KEY.pub`` (give it to the disconnected side's ``[bundle]
trusted_keys``). ``openssl genpkey -algorithm ed25519 -out KEY`` and ``openssl pkey -in
KEY -pubout -out KEY.pub`` make the same files.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def register(commands: Any) -> None:
    parser = commands.add_parser("keygen", help="make an Ed25519 key pair for signing bundles",
                                 description="Write a new Ed25519 private key to KEY (mode 0600) and its public "
                                             "key to KEY.pub. Existing files are never overwritten.")
    parser.add_argument("-o", "--output", required=True, metavar="KEY", help="the private key file to write")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from angosd.archive.bundle import key_id, private_pem, public_pem

    key = Ed25519PrivateKey.generate()
    try:
        descriptor = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(private_pem(key))
        with open(f"{args.output}.pub", "xb") as out:
            out.write(public_pem(key.public_key()))
    except OSError as exc:
        print(f"angosd keygen: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"private key {args.output}, public key {args.output}.pub (key id {key_id(key.public_key())})")
    return 0
