#!/usr/bin/env python3
"""A TLS-terminating TCP proxy (Python standard library only) for the Kafka TLS test: tansu 0.6's
own TLS listener is unusable, so tansu listens on plain TCP, advertises this proxy's address, and
the proxy accepts TLS on 127.0.0.1:LISTEN_PORT and forwards the decrypted bytes to
127.0.0.1:UPSTREAM_PORT. One thread per connection; each thread moves the bytes of both directions
with select() on non-blocking sockets (an SSL socket must not be read and written from two threads
at once). A failed handshake (an untrusted certificate, a plaintext client) closes the connection
without a reply, as a Kafka broker's TLS listener does, and is logged on stderr.

Usage: tls_proxy.py LISTEN_PORT UPSTREAM_PORT CERT_PEM KEY_PEM
"""
import select
import socket
import ssl
import sys
import threading

CHUNK = 65536


def log(message):
    print(f"tls_proxy: {message}", file=sys.stderr, flush=True)


def relay(tls, upstream):
    """Moves bytes both ways until either side closes. One buffer per direction: a side is read only
    when its buffer is empty (back pressure)."""
    tls.setblocking(False)
    upstream.setblocking(False)
    to_upstream, to_client = b"", b""
    while True:
        if not to_upstream and tls.pending():
            # Bytes OpenSSL decrypted already: select() does not see them.
            readable, writable = [tls], []
        else:
            readers = ([] if to_upstream else [tls]) + ([] if to_client else [upstream])
            writers = ([upstream] if to_upstream else []) + ([tls] if to_client else [])
            readable, writable, _ = select.select(readers, writers, [], 300)
            if not readable and not writable:
                continue
        if tls in readable:
            try:
                data = tls.recv(CHUNK)
                if not data:
                    return
                to_upstream = data
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
        if upstream in readable:
            try:
                data = upstream.recv(CHUNK)
                if not data:
                    return
                to_client = data
            except BlockingIOError:
                pass
        if to_upstream:
            try:
                to_upstream = to_upstream[upstream.send(to_upstream):]
            except BlockingIOError:
                pass
        if to_client:
            # SSL_write takes all of it or nothing (no partial writes); retried with the same bytes.
            try:
                to_client = to_client[tls.send(to_client):]
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass


def serve(raw, address, context, upstream_port):
    peer = "%s:%d" % address
    raw.settimeout(10)
    try:
        tls = context.wrap_socket(raw, server_side=True)
    except (ssl.SSLError, OSError) as error:
        log(f"{peer}: TLS handshake failed: {error}")
        raw.close()
        return
    try:
        upstream = socket.create_connection(("127.0.0.1", upstream_port), timeout=10)
    except OSError as error:
        log(f"{peer}: upstream 127.0.0.1:{upstream_port}: {error}")
        tls.close()
        return
    try:
        relay(tls, upstream)
    except (ssl.SSLError, OSError):
        pass
    finally:
        upstream.close()
        tls.close()


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__.strip().splitlines()[-1])
    listen_port, upstream_port, cert, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", listen_port))
    log(f"TLS on 127.0.0.1:{listen_port} -> 127.0.0.1:{upstream_port}")
    while True:
        raw, address = listener.accept()
        threading.Thread(target=serve, args=(raw, address, context, upstream_port), daemon=True).start()


if __name__ == "__main__":
    main()
