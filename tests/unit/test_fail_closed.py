"""Configured protections are never dropped in silence: the AE health check over a TLS
connection whose peer's certificate does not verify reports the AE down and never tries
again without TLS (the directory's TLS: tests/integration/test_directory.py, NTS:
tests/integration/test_time.py)."""

from __future__ import annotations

import socket
import subprocess
import threading

from agent.adapters.health import echo


def test_the_health_check_over_tls_fails_closed(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=archive.test"],
                   check=True, capture_output=True)
    other = tmp_path / "other-ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
                    str(tmp_path / "other.key"), "-out", str(other), "-days", "1",
                    "-subj", "/CN=someone else"], check=True, capture_output=True)
    import ssl

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    first_bytes: list[int] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def serve() -> None:
        server.settimeout(10)
        for _ in range(3):
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                peek = conn.recv(1, socket.MSG_PEEK)
                first_bytes.append(peek[0] if peek else -1)
                try:
                    with context.wrap_socket(conn, server_side=True):
                        pass
                except (ssl.SSLError, OSError):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        problem = echo("DICOM_AGENT", "ARCHIVE", "127.0.0.1", port,
                       tls_hostname="archive.test", ca_file=other, timeout=3)
    finally:
        server.close()
        thread.join(5)
    assert problem is not None  # down: the certificate does not chain to ca_file
    # Every connection began a TLS handshake (0x16); none was a plain A-ASSOCIATE-RQ (0x01).
    assert first_bytes and set(first_bytes) == {0x16}, first_bytes
