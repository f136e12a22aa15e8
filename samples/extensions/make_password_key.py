"""Make the RSA key pair for password submit.

    python make_password_key.py .local/password-key.pem [--days 365] [--subject CN=extensions]

writes
  .local/password-key.pem       the private key (PKCS#8, unencrypted, mode 0600): PASSWORD_PRIVATE_KEY_FILE
  .local/password-key.pub.pem   the public key (SubjectPublicKeyInfo PEM)
  .local/password-key.crt       a self-signed certificate of the public key (PEM), the form Entra wants
                                in the extension app's keyCredentials (usage "Encrypt")
and prints the public key as a JWK (with its thumbprint as "kid").

The caller (the native-auth backend, or Entra) encrypts each password to the
public key; only this extension can decrypt it. Keep the private key in a
secret store (e.g. Key Vault) in production.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from jwcrypto import jwk


def make(private_path: Path, days: int = 365, common_name: str = "extensions") -> dict:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    stem = private_path.name.removesuffix(".pem")
    private_path.with_name(stem + ".pub.pem").write_bytes(public_pem)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=True,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    private_path.with_name(stem + ".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    public = jwk.JWK.from_pem(public_pem)
    return {**json.loads(public.export_public()), "kid": public.thumbprint(), "use": "enc", "alg": "RSA-OAEP"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("private_key", type=Path, help="where to write the private key PEM")
    parser.add_argument("--days", type=int, default=365, help="certificate validity (default 365)")
    parser.add_argument("--subject", default="extensions", help="certificate common name")
    args = parser.parse_args(argv)
    if args.private_key.exists():
        parser.error(f"{args.private_key} exists; not overwriting a key")
    public_jwk = make(args.private_key, args.days, args.subject)
    print(json.dumps(public_jwk, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
