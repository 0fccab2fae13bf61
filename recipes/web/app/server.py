#!/usr/bin/env python3
"""Serves WEB_ROOT (only .html/.css files) on WEB_BIND:WEB_PORT."""

import functools
import http.server
import os

ROOT = os.environ.get("WEB_ROOT", os.path.dirname(os.path.abspath(__file__)))
BIND = os.environ.get("WEB_BIND", "0.0.0.0")
PORT = int(os.environ.get("WEB_PORT", "8080"))


class Handler(http.server.SimpleHTTPRequestHandler):
    def send_head(self):
        path = self.path.split("?", 1)[0]
        if not (path.endswith("/") or path.endswith(".html") or path.endswith(".css")):
            self.send_error(404)
            return None
        return super().send_head()


if __name__ == "__main__":
    handler = functools.partial(Handler, directory=ROOT)
    http.server.ThreadingHTTPServer((BIND, PORT), handler).serve_forever()
