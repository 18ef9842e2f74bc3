"""Registration helpers: the PKCE verifier the device keeps, its challenge, and clearing the
provisioned refresh token when the registration ends. Rarely used, so imported on demand.

The verifier never leaves the device except inside the authorization-code request to the
token endpoint; the maker's registration page only ever sees the challenge.
"""

import json
import os
from binascii import b2a_base64

PKCE = "pkce.json"


def b64url(data):
    """base64url without padding (RFC 7636)."""
    return b2a_base64(data).strip().replace(b"+", b"-").replace(b"/", b"_").rstrip(b"=")


def verifier(store, new=False):
    """The device's code_verifier: 64 characters from 48 random bytes, kept on flash until a
    code exchange uses it."""
    rec = None if new else store.load(PKCE)
    v = rec.get("v") if rec else None
    if not isinstance(v, str) or not 43 <= len(v) <= 128:
        v = b64url(os.urandom(48)).decode()
        store.save(PKCE, {"v": v})
    return v


def challenge(v):
    """S256 code_challenge of a verifier."""
    import hashlib

    return b64url(hashlib.sha256(v.encode()).digest()).decode()


def forget_provisioned_token(root):
    """Rewrite secrets.json without its refresh_token (atomically), keeping the rest."""
    path = root + "/secrets.json"
    try:
        with open(path) as f:
            obj = json.loads(f.read(8192))
    except (OSError, ValueError):
        return
    if not isinstance(obj, dict) or "refresh_token" not in obj:
        return
    del obj["refresh_token"]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(obj))
    os.rename(tmp, path)
