"""Test PKI for the DRS emulator: a trusted CA, good and bad server leaves, a rogue CA.

Everything is EC P-256, made with the `openssl` CLI and valid for 30 days. Files are
reused while complete and the CA has more than 2 days left, so repeated runs are cheap.

Keys of the dict returned by ensure_certs (values are absolute paths):
  ca, ca_key                 test root CA the device trusts
  ca_der                     the same CA certificate in DER (the MicroPython unix port's
                             load_verify_locations() was seen to refuse PEM)
  server, server_key         leaf for DNS:localhost and IP:127.0.0.1, signed by ca
  wrongname, wrongname_key   leaf for DNS:wrong.example only, signed by ca
  rogue_ca, rogue_ca_key     a second CA nobody trusts
  rogue, rogue_key           leaf for DNS:localhost, signed by rogue_ca
  client, client_key         a device's client certificate (CN dash-dev-1, clientAuth), signed
                             by ca: mutual TLS with the test MQTT broker, as AWS IoT Core asks

CLI: python3 tools/certs.py OUTDIR
"""

import os
import secrets
import subprocess
import sys
import tempfile

DAYS = 30
MIN_REMAINING = 2 * 24 * 3600

CA_EXT = """basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""
# mbedTLS enforces keyUsage/extendedKeyUsage when present, so state exactly what a TLS
# server leaf needs.
LEAF_EXT = """basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = {san}
"""
CLIENT_EXT = """basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""
CLIENT = "client"  # in place of a SAN: a client leaf

# name -> (common name, issuer name or None for self-signed, SAN, CLIENT or None for a CA)
SPECS = {
    "ca": ("DRS Emulator Test CA", None, None),
    "server": ("localhost", "ca", "DNS:localhost, IP:127.0.0.1"),
    "wrongname": ("wrong.example", "ca", "DNS:wrong.example"),
    "rogue-ca": ("Rogue Untrusted CA", None, None),
    "rogue": ("localhost", "rogue-ca", "DNS:localhost"),
    "client": ("dash-dev-1", "ca", CLIENT),
}


def _paths(outdir):
    paths = {}
    for name in SPECS:
        key = name.replace("-", "_")
        paths[key] = os.path.join(outdir, name + ".pem")
        paths[key + "_key"] = os.path.join(outdir, name + ".key")
    paths["ca_der"] = os.path.join(outdir, "ca.der")
    return paths


def _openssl(*args, cwd=None):
    subprocess.run(["openssl", *args], check=True, cwd=cwd, capture_output=True)


def _still_valid(paths):
    if not all(os.path.isfile(p) for p in paths.values()):
        return False
    probe = ["openssl", "x509", "-noout", "-checkend", str(MIN_REMAINING), "-in", paths["ca"]]
    return subprocess.run(probe, check=False, capture_output=True).returncode == 0


def _make(tmp, name):
    cn, issuer, san = SPECS[name]
    key, pem, csr, ext = (os.path.join(tmp, name + s) for s in (".key", ".pem", ".csr", ".ext"))
    with open(ext, "w") as f:
        if san is None:
            f.write(CA_EXT)
        else:
            f.write(CLIENT_EXT if san == CLIENT else LEAF_EXT.format(san=san))
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key)
    # An explicit empty config keeps the host's openssl.cnf from adding extensions.
    _openssl("req", "-new", "-config", os.devnull, "-key", key, "-subj", "/CN=" + cn, "-out", csr)
    sign = (
        ["-signkey", key]
        if issuer is None
        else [
            "-CA",
            os.path.join(tmp, issuer + ".pem"),
            "-CAkey",
            os.path.join(tmp, issuer + ".key"),
        ]
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        csr,
        *sign,
        "-days",
        str(DAYS),
        "-sha256",
        "-set_serial",
        "0x" + secrets.token_hex(16),
        "-extfile",
        ext,
        "-extensions",
        "default",
        "-out",
        pem,
    )
    if name == "ca":
        _openssl("x509", "-in", pem, "-outform", "DER", "-out", os.path.join(tmp, "ca.der"))


def ensure_certs(outdir):
    """Create (or reuse) the test certificates in outdir; return {name: absolute path}."""
    outdir = os.path.abspath(outdir)
    os.makedirs(outdir, mode=0o700, exist_ok=True)
    paths = _paths(outdir)
    if _still_valid(paths):
        return paths
    # Build in a scratch dir inside outdir, then rename: concurrent callers and
    # interrupted runs never see a half-written set, and keys never leave outdir.
    with tempfile.TemporaryDirectory(dir=outdir, prefix=".certs-") as tmp:
        for name in SPECS:  # dict order puts each CA before its leaves
            _make(tmp, name)
        for path in paths.values():
            src = os.path.join(tmp, os.path.basename(path))
            os.chmod(src, 0o600 if path.endswith(".key") else 0o644)
            os.replace(src, path)
    return paths


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: certs.py OUTDIR")
    for k, v in ensure_certs(sys.argv[1]).items():
        print(f"{k}\t{v}")
