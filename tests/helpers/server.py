"""A local HTTP server for downloads: files served whole, cut off half-way, or slowly."""

from __future__ import annotations

import contextlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FileHandler(BaseHTTPRequestHandler):
    """GET /files/NAME serves self.server.files[NAME]; /drop/NAME sends half of it and closes the
    connection; /slow/NAME sends 64 KB every 20 ms, so a download can be caught half-way."""

    def do_GET(self):  # the name http.server calls
        kind, _, name = self.path.strip("/").partition("/")
        data = self.server.files.get(name)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            if kind == "drop":
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
            elif kind == "slow":
                for i in range(0, len(data), 1 << 16):
                    self.wfile.write(data[i : i + (1 << 16)])
                    self.wfile.flush()
                    time.sleep(0.02)
            else:
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (killed on purpose)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(files: dict):
    """Serve `files` ({name: bytes}, read at request time) on a free local port; yields the base
    URL, "http://127.0.0.1:PORT"."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FileHandler)
    srv.files = files
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
