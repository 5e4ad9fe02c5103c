"""Config checks that look past a value's type: the TLS files it names, the MQTT names.

``gateway/config.py`` calls these while loading, so a file that exists but is not what
the key says (a CA file that holds no PEM certificate, a client key that does not fit its
certificate or needs a passphrase, a file the gateway cannot read) and a topic paho would
refuse are reported by ``check-config`` with their key path, with every other problem,
instead of stopping ``run`` with a traceback. Each check appends ``"key: why"`` lines to
``problems``; none echoes a file's content. The files are loaded with ``ssl`` exactly as
the uplink's paho client loads them (``load_verify_locations``, ``load_cert_chain``).
"""

from __future__ import annotations

import ssl


class _NeedsPassphrase(Exception):
    """load_cert_chain asked for a passphrase (OpenSSL would otherwise prompt on a tty)."""


def _ask_passphrase() -> str:
    raise _NeedsPassphrase


def _readable(key: str, path: str, problems: list[str]) -> bool:
    try:
        with open(path, "rb"):
            return True
    except FileNotFoundError:
        problems.append(f"{key}: no such file {path}")
    except IsADirectoryError:
        problems.append(f"{key}: {path} is a folder, not a file")
    except OSError as e:
        problems.append(f"{key}: cannot read {path}: {e.strerror}")
    return False


def _ssl_reason(e: ssl.SSLError) -> str:
    return str(e.reason or e).replace("_", " ").lower()


def tls_files(section: str, ca_file: str, client_cert: str, client_key: str,
              problems: list[str]) -> None:
    """The CA file holds PEM certificates; the client certificate and key load together."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_file and _readable(f"{section}.ca_file", ca_file, problems):
        try:
            ctx.load_verify_locations(cafile=ca_file)
            found = ctx.cert_store_stats()["x509"] > 0
        except ssl.SSLError:
            found = False
        if not found:
            problems.append(f"{section}.ca_file: {ca_file} holds no PEM certificate (a "
                            "DER file, a key or something else? the gateway needs the CA "
                            "certificate(s) in PEM, '-----BEGIN CERTIFICATE-----')")
    cert_ok = bool(client_cert) and _readable(f"{section}.client_cert", client_cert, problems)
    key_ok = bool(client_key) and _readable(f"{section}.client_key", client_key, problems)
    if not (cert_ok and key_ok):
        return
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=client_cert)
    except ssl.SSLError:
        problems.append(f"{section}.client_cert: {client_cert} holds no PEM certificate")
        return
    try:
        ctx.load_cert_chain(client_cert, client_key, password=_ask_passphrase)
    except _NeedsPassphrase:
        problems.append(f"{section}.client_key: {client_key} is encrypted; the gateway "
                        "cannot ask for a passphrase (store the key unencrypted, readable "
                        "only by the gateway's user)")
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            problems.append(f"{section}.client_key: {client_key} is not the key of "
                            f"{section}.client_cert {client_cert}")
        else:
            problems.append(f"{section}.client_key: {client_key} holds no PEM private key "
                            f"({_ssl_reason(e)})")


def topic_filter(key: str, value: str, problems: list[str]) -> None:
    """An MQTT subscription filter (MQTT 3.1.1 section 4.7): ``#`` only as the whole last
    level, ``+`` only as a whole level."""
    levels = value.split("/")
    if not value:
        problems.append(f"{key}: must not be empty")
    elif any(("#" in lv and (lv != "#" or i != len(levels) - 1)) or ("+" in lv and lv != "+")
             for i, lv in enumerate(levels)):
        problems.append(f"{key}: {value!r} is not an MQTT topic filter ('+' and '#' stand "
                        "for whole levels, '#' only at the end)")


def topic_name(key: str, value: str, problems: list[str]) -> None:
    """A topic to publish to (or a prefix of one): no wildcards."""
    if not value:
        problems.append(f"{key}: must not be empty")
    elif "+" in value or "#" in value:
        problems.append(f"{key}: {value!r} must not contain the wildcards + or #")
