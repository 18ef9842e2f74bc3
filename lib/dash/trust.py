"""Trust stores and TLS client contexts: PEM or DER certificates and keys, read into a context
that verifies its peer. Loaded when a context is made (the transport's at boot, the cloud
link's at its first connect) and dropped again: nothing here is needed once it exists.
"""

from binascii import a2b_base64

import tls

from dash.https import E_CA, HttpError


def ders(path, kind=b"CERTIFICATE"):
    """The DER blocks of a PEM file whose BEGIN line names `kind` (a trust store's
    certificates, a client certificate, or its PRIVATE KEY in any of its forms), read line by
    line (mbedTLS here parses DER only); a file that is one DER object already (Amazon serves
    its roots as `.cer`) is taken whole. Raises HttpError(E_CA) when there is none."""
    out = []
    b64: list | None = None
    try:
        with open(path, "rb") as f:
            first = f.read(1)
            f.seek(0)
            for line in f:
                line = line.strip()
                if line.startswith(b"-----BEGIN ") and kind in line:
                    b64 = []
                elif line.startswith(b"-----END ") and b64 is not None:
                    out.append(a2b_base64(b"".join(b64)))
                    b64 = None
                elif b64 is not None:
                    b64.append(line)
            if not out and first == b"0":  # 0x30: an ASN.1 SEQUENCE, DER already
                f.seek(0)
                out.append(f.read(8192))
    except (OSError, ValueError):
        raise HttpError(E_CA, path)
    if not out:
        raise HttpError(E_CA, path)
    return out


def context(ca_path, spare=None, cert_path="", key_path=""):
    """A TLS client context that verifies the peer against the certificates in `ca_path`
    (CERT_REQUIRED), with a client certificate and key when given (mutual TLS); made new, or
    taken from the list `spare`. Raises HttpError(E_CA) naming the file that cannot be read or
    parsed."""
    ders_ = ders(ca_path)  # first: when reading fails, a spare context is not used up
    ctx = spare.pop() if spare else tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = tls.CERT_REQUIRED  # type: ignore[union-attr]  # stubs lack it
    for der in ders_:
        try:
            ctx.load_verify_locations(der)
        except ValueError:
            raise HttpError(E_CA, ca_path)
    if cert_path:
        key = ders(key_path, b"PRIVATE KEY")[0]
        try:
            ctx.load_cert_chain(ders(cert_path)[0], key)
        except ValueError:
            raise HttpError(E_CA, cert_path)
    return ctx
