"""TLS servers on 127.0.0.1 for the TLS probe tests, one listener per certificate.

    tls.py --serve NAME=CERT,KEY[,tls1.0|tls1.2][,weak-headers][,plain|smtp][,port=N] ...

Each listener binds a free port and prints `NAME PORT`; `ready` follows once all listen. A
connection is taken through the handshake; one that sends an HTTP request gets a 200 with the
security headers a hardened site sends (HSTS for a year, CSP with frame-ancestors, nosniff), or
with a short HSTS and nothing else under `weak-headers`. `tls1.0` serves TLS 1.0 only (at OpenSSL
security level 0, which old versions need), as an unpatched server would; `tls1.2` serves TLS 1.2
at most. `plain` answers HTTP
without TLS (the headers of a site whose certificate no public root signs, for the step's HTTP).
`smtp` speaks SMTP in the clear first (greeting, EHLO offering STARTTLS, STARTTLS), as a mail
submission port does, then shakes hands. `port=N` listens on N instead of a free port.
"""
import argparse
import warnings
import socket
import ssl
import sys
import threading

GOOD = (
    "Strict-Transport-Security: max-age=31536000; includeSubDomains\r\n"
    "Content-Security-Policy: default-src 'self'; frame-ancestors 'none'\r\n"
    "X-Content-Type-Options: nosniff\r\n"
)
WEAK = "Strict-Transport-Security: max-age=300\r\n"


def serve(listener, context, headers, starttls):
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=answer, args=(conn, context, headers, starttls), daemon=True).start()


def smtp(conn):
    """The clear-text part of SMTP up to STARTTLS; False when the client went another way."""
    reader = conn.makefile("rb")
    conn.sendall(b"220 tls.py ESMTP\r\n")
    if not reader.readline().upper().startswith(b"EHLO"):
        return False
    conn.sendall(b"250-tls.py\r\n250-PIPELINING\r\n250 STARTTLS\r\n")
    if reader.readline().strip().upper() != b"STARTTLS":
        return False
    conn.sendall(b"220 2.0.0 Ready to start TLS\r\n")
    return True


def answer(conn, context, headers, starttls=False):
    conn.settimeout(5)
    try:
        if starttls and not smtp(conn):
            return
        with (context.wrap_socket(conn, server_side=True) if context else conn) as tls:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = tls.recv(4096)
                if not chunk:
                    return
                request += chunk
            body = "ok\n"
            tls.sendall(
                f"HTTP/1.1 200 OK\r\n{headers}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}".encode()
            )
    except (ssl.SSLError, OSError):
        pass  # a probe closes right after its handshake; a refused handshake ends here too


def main():
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # TLS 1.0 is the point
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", action="append", default=[])
    args = parser.parse_args()
    for spec in args.serve:
        name, rest = spec.split("=", 1)
        cert, key, *flags = rest.split(",")
        context = None if "plain" in flags else ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if context:
            context.load_cert_chain(cert, key)
        if "tls1.0" in flags:
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = ssl.TLSVersion.TLSv1
        if "tls1.2" in flags:
            context.maximum_version = ssl.TLSVersion.TLSv1_2
        listener = socket.socket()
        port = next((int(f[5:]) for f in flags if f.startswith("port=")), 0)
        listener.bind(("127.0.0.1", port))
        listener.listen(16)
        print(name, listener.getsockname()[1], flush=True)
        headers = WEAK if "weak-headers" in flags else GOOD
        threading.Thread(target=serve, args=(listener, context, headers, "smtp" in flags), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
