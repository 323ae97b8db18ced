"""SSH keys for one VM: the host's client key and the guest's host key, both made on the host.

Generating the guest's host key on the host (and handing it to the guest in the config initramfs, see
runner.vm.initrd) means the host knows the key it must see before the first connection: SSH is pinned from
the very first boot, with no trust-on-first-use window. Both keys are ed25519 in OpenSSH private-key format
(dropbear converts the host key with dropbearconvert at boot); private key files are created 0600.

Uses ``cryptography`` (a paramiko dependency, imported lazily) because paramiko cannot generate ed25519 keys.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from runner import procs

CLIENT_KEY = "client_ed25519"
HOST_KEY = "host_ed25519"


@dataclass(frozen=True)
class KeyPair:
    """One generated key: where its private half is, and its public half as text."""

    private_path: Path
    public: str          # "ssh-ed25519 AAAA... comment" (one authorized_keys / known_hosts line, no newline)
    fingerprint: str     # "SHA256:..." as ssh-keygen -l prints it

    @property
    def private_pem(self) -> str:
        """The OpenSSH private key text (what config.json's ssh_host_key carries)."""
        return self.private_path.read_text()

    @property
    def key_type(self) -> str:
        return self.public.split()[0]

    @property
    def key_base64(self) -> str:
        return self.public.split()[1]


def fingerprint(public: str) -> str:
    """OpenSSH's SHA256 fingerprint of a public key line ("ssh-ed25519 AAAA...")."""
    blob = base64.b64decode(public.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def generate(private_path: str | os.PathLike, comment: str) -> KeyPair:
    """Create an ed25519 key at ``private_path`` (0600, never world-readable even briefly) and its .pub."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                            serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode() + f" {comment}"
    path = Path(private_path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    procs.write_atomic(path, pem, 0o600)
    path.with_name(path.name + ".pub").write_text(public + "\n")
    return KeyPair(private_path=path, public=public, fingerprint=fingerprint(public))


def load(private_path: str | os.PathLike) -> KeyPair:
    """A key made earlier by :func:`generate` (public half read from its .pub file)."""
    path = Path(private_path)
    public = path.with_name(path.name + ".pub").read_text().strip()
    return KeyPair(private_path=path, public=public, fingerprint=fingerprint(public))


def ensure_keys(keys_dir: str | os.PathLike, machine: str) -> tuple[KeyPair, KeyPair]:
    """(client key, guest host key) in ``keys_dir``, generated on first use and reused afterwards."""
    keys_dir = Path(keys_dir)
    pairs = []
    for name, comment in ((CLIENT_KEY, f"runner-client@{machine}"), (HOST_KEY, f"runner-host@{machine}")):
        path = keys_dir / name
        pairs.append(load(path) if path.exists() and path.with_name(name + ".pub").exists()
                     else generate(path, comment))
    return pairs[0], pairs[1]
